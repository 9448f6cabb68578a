package server

import (
	"context"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// Prompt detection of a silent leader (issue 14, benchmark 3).
//
// hashicorp/raft's follower does not notice a silent leader when it has
// been silent for HeartbeatTimeout: it checks on a timer that fires every
// HeartbeatTimeout to 2×HeartbeatTimeout, whatever the contact, so the
// check comes 1 to 3 timeouts after the leader's last contact. And a
// follower that has not made that check yet still knows a leader and
// refuses the pre-vote of the one that did, so the election waits for the
// second follower's check: measured 1.8 to 2.2 s from a leader's kill -9
// to the new leader at the production timeout of 1 s (docs/benchmarks.md).
//
// leaderWatch makes that check on time: every HeartbeatTimeout/20 it
// looks at the follower's last contact, and once the leader has been
// silent for HeartbeatTimeout plus this server's stagger it wakes Raft's
// own heartbeat check (pokeRaft), which then starts the election as Raft
// would have at its next tick. Nothing else changes: the timeout is still
// the production HeartbeatTimeout (an election never starts before it
// runs out), Raft decides (pre-vote, the log's up-to-dateness, the
// term), and LeaderLeaseTimeout (< HeartbeatTimeout) still makes a
// partitioned leader step down before anyone may start an election.
// Raft's randomized timer, which keeps candidates apart, is replaced by a
// fixed order: the followers wake one stagger (HeartbeatTimeout/10) apart
// in the order of their IDs, the old leader left out, so that no two
// split the vote; the election is won when a majority of the survivors
// has woken (with 3 servers: the second, HeartbeatTimeout × 1.1 after
// the last contact). Raft's own timer stays as the fallback.
func (s *Server) leaderWatch(ctx context.Context, timeout time.Duration) {
	tick := time.NewTicker(max(timeout/20, time.Millisecond))
	defer tick.Stop()
	poked := time.Time{} // last contact at the last poke: one poke per silence
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if s.raft.State() != raft.Follower {
			continue
		}
		_, leader := s.raft.LeaderWithID()
		last := s.raft.LastContact()
		if leader == "" || last.IsZero() || last.Equal(poked) {
			continue // campaigning already, never heard a leader, or poked for this silence
		}
		silent := time.Since(last)
		if silent < timeout {
			continue
		}
		rank := s.voterRank(leader)
		if rank < 0 || silent < timeout+time.Duration(rank)*(timeout/10) {
			continue
		}
		poked = last
		s.log.Info("leader silent for the heartbeat timeout: starting Raft's heartbeat check now",
			"leader", leader, "silent", silent.Round(time.Millisecond), "rank", rank)
		if err := pokeRaft(s.raft); err != nil {
			s.log.Warn("waking Raft's heartbeat check failed; Raft's own timer will start the election", "error", err)
		}
	}
}

// voterRank is this server's place among the voters other than leader,
// sorted by ID; -1 when it is not one of them.
func (s *Server) voterRank(leader raft.ServerID) int {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return -1
	}
	var ids []string
	for _, sv := range f.Configuration().Servers {
		if sv.Suffrage == raft.Voter && sv.ID != leader {
			ids = append(ids, string(sv.ID))
		}
	}
	slices.Sort(ids)
	return slices.Index(ids, s.cfg.Name)
}

// pokeRaft makes a follower run its heartbeat check at once. Raft wakes
// the check when a reload shortens HeartbeatTimeout; the timeout is
// shortened by one nanosecond and put back, so the check compares the
// silence with the configured timeout.
func pokeRaft(r *raft.Raft) error {
	rc := r.ReloadableConfig()
	orig := rc
	rc.HeartbeatTimeout -= time.Nanosecond
	if err := r.ReloadConfig(rc); err != nil {
		return err
	}
	return r.ReloadConfig(orig)
}
