package server

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/structs"
)

// leaderLoop runs the leader's duties while this server is leader.
func (s *Server) leaderLoop(ctx context.Context) {
	var stop context.CancelFunc
	var wg sync.WaitGroup
	end := func() {
		if stop != nil {
			stop()
			wg.Wait()
			stop = nil
		}
	}
	defer end()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-s.raft.LeaderCh():
			end()
			s.readyTerm.Store(0)
			if !isLeader {
				s.log.Info("leadership lost")
				continue
			}
			s.log.Info("leadership acquired")
			lctx, cancel := context.WithCancel(ctx)
			stop = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.lead(lctx)
			}()
		}
	}
}

func (s *Server) lead(ctx context.Context) {
	// Apply everything committed by earlier leaders before deciding
	// anything, or serving an agent its desired state: before the barrier
	// this server's state may lack placements an earlier leader committed.
	term := s.raft.CurrentTerm()
	barrier := s.cfg.barrier
	if barrier == nil {
		barrier = func(r *raft.Raft, timeout time.Duration) error { return r.Barrier(timeout).Error() }
	}
	if err := barrier(s.raft, 30*time.Second); err != nil {
		s.log.Warn("barrier failed", "error", err)
		return
	}
	s.readyTerm.Store(term)
	s.log.Info("barrier passed: serving agents' desired state", "term", term)
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context){s.hb.Run, s.alarmer.Run, s.placer.Run, s.peerLoop, s.taskRunner.Run, s.guard.Run, s.recovery.Run, s.incidentPruner} {
		wg.Add(1)
		go func(fn func(context.Context)) {
			defer wg.Done()
			fn(ctx)
		}(fn)
	}
	wg.Wait()
}

// leaderReady reports whether this server leads and has passed its
// barrier in the current term.
func (s *Server) leaderReady() bool {
	t := s.readyTerm.Load()
	return t != 0 && s.IsLeader() && t == s.raft.CurrentTerm()
}

// errBarrierPending answers an agent's desired-state query on a leader
// that has not passed its barrier yet: 503, the agent retries.
var errBarrierPending = &structs.Error{Kind: structs.ErrNoLeader, Field: "leader",
	Message: "this server has just become leader and has not applied every committed entry yet (raft barrier pending): retry"}

// peerLoop adds servers that gossip knows and Raft does not as voters, so
// that a server started later with --join becomes part of the cluster.
func (s *Server) peerLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f := s.raft.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		known := map[raft.ServerID]bool{}
		for _, sv := range f.Configuration().Servers {
			known[sv.ID] = true
		}
		for _, m := range s.pool.Servers() {
			id := raft.ServerID(m.Meta["id"])
			if id == "" || known[id] || m.Meta["raft"] == "" {
				continue
			}
			if err := s.mayAddVoter(m.Meta["raft"], f.Configuration()); err != nil {
				s.warnRefusedVoter(id, err)
				continue
			}
			if err := s.raft.AddVoter(id, raft.ServerAddress(m.Meta["raft"]), 0, 10*time.Second).Error(); err != nil {
				s.log.Warn("add raft voter failed", "server", id, "error", err)
				continue
			}
			s.log.Info("server joined the raft cluster", "server", id)
		}
	}
}
