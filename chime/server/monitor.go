package server

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
)

// monitor is the leader's node monitor. Heartbeat arrival times live only
// in this leader's memory; only transitions (normal → unreachable, …) are
// written through Raft, with an event. A new leader starts every node's
// clock at its own election, so a leader change never causes a false
// unreachable.
type monitor struct {
	s   *Server
	log hclog.Logger
	now func() time.Time // injected clock (monotonic readings)

	mu          sync.Mutex
	last        map[string]time.Time // node id → arrival of its last heartbeat at this leader
	faults      map[string][]string  // node id → faults carried by that heartbeat
	pinging     map[string]bool      // node id → a ping-back is in flight
	leaderSince time.Time            // when this server became leader: the grace period's start
}

func newMonitor(s *Server) *monitor {
	return &monitor{s: s, log: s.log.Named("monitor"), now: time.Now,
		last: map[string]time.Time{}, faults: map[string][]string{}, pinging: map[string]bool{}}
}

// reset starts a new term of leadership: every node gets a full grace period.
func (m *monitor) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leaderSince = m.now()
	m.last = map[string]time.Time{}
	m.faults = map[string][]string{}
	m.pinging = map[string]bool{}
}

func (m *monitor) forget(nodeID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.last, nodeID)
	delete(m.faults, nodeID)
}

// limit is how long a node may be silent before a ping-back.
func (m *monitor) limit() time.Duration {
	return time.Duration(m.s.cfg.MissedHeartbeats) * m.s.cfg.HeartbeatInterval
}

// heartbeat records an arrival and writes the transition it implies.
// hb is nil for a registration (time only).
func (m *monitor) heartbeat(nodeID string, hb *api.HeartbeatRequest) {
	m.mu.Lock()
	m.last[nodeID] = m.now()
	var faults []string
	if hb != nil {
		faults = append([]string(nil), hb.Faults...)
		sort.Strings(faults)
		m.faults[nodeID] = faults
	}
	m.mu.Unlock()
	if hb == nil {
		return
	}
	n, err := m.s.fsm.Node(nodeID)
	if err != nil {
		return
	}
	want := stateFromHeartbeat(faults)
	if n.MonitorState == want && equalFaults(n.Faults, faults) {
		return
	}
	reason := "heartbeat received"
	if want == structs.MonitorError {
		reason = "agent reports faults"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.s.propose(ctx, "", fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: nodeID, State: want, Faults: faults, Reason: reason}); err != nil {
		m.log.Warn("record node state failed", "node", n.Name, "state", want, "error", err)
		return
	}
	m.log.Info("node state changed", "node", n.Name, "from", n.MonitorState, "to", want, "faults", faults)
}

// stateFromHeartbeat is the monitor state a heartbeat with these faults means.
func stateFromHeartbeat(faults []string) string {
	if len(faults) > 0 {
		return structs.MonitorError
	}
	return structs.MonitorNormal
}

func equalFaults(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// silentFor says how long a node has been silent as far as this leader can
// tell: never longer than this leader has been leader.
func silentFor(now, last, leaderSince time.Time) time.Duration {
	ref := last
	if leaderSince.After(ref) {
		ref = leaderSince
	}
	return now.Sub(ref)
}

// run checks nodes until ctx ends (leadership lost).
func (m *monitor) run(ctx context.Context) {
	m.reset()
	tick := max(m.s.cfg.HeartbeatInterval/4, 50*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	// Reading the node list decodes every node: with thousands of nodes
	// that cost more than the heartbeats themselves. Heartbeats are not
	// written, so in steady state the list is reused until the applied
	// index moves (it is bumped only after an apply is visible, so a list
	// read after the index is at least that new), and re-read at least once
	// per silence limit all the same.
	var nodes []structs.Node
	var nodesAt uint64      // applied index read before nodes
	var nodesRead time.Time // when nodes was read
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := m.now()
		if idx := m.s.fsm.Index(); nodes == nil || idx != nodesAt || now.Sub(nodesRead) > m.limit() {
			fresh, err := m.s.fsm.Nodes()
			if err != nil {
				continue
			}
			nodes, nodesAt, nodesRead = fresh, idx, now
			if nodes == nil {
				nodes = []structs.Node{}
			}
		}
		m.mu.Lock()
		for _, n := range nodes {
			if n.MonitorState == structs.MonitorUnreachable || m.pinging[n.ID] {
				continue
			}
			if silentFor(now, m.last[n.ID], m.leaderSince) <= m.limit() {
				continue
			}
			m.pinging[n.ID] = true
			wg.Add(1)
			go func(n structs.Node) {
				defer wg.Done()
				m.pingBack(ctx, n)
			}(n)
		}
		m.mu.Unlock()
	}
}

// pingBack asks the node directly and through gossip (SWIM probes with
// indirect probes through other members). Both fail → unreachable.
func (m *monitor) pingBack(ctx context.Context, n structs.Node) {
	defer func() {
		m.mu.Lock()
		delete(m.pinging, n.ID)
		m.mu.Unlock()
	}()
	start := m.now()
	direct := m.directPing(ctx, n)
	viaGossip := m.s.pool.Reachable(n.ID)
	if direct == nil || viaGossip {
		m.log.Warn("heartbeats missing but the node answers", "node", n.Name, "direct_error", direct, "gossip_alive", viaGossip)
		// Count the answer as a sign of life for one more period, so that
		// a node whose heartbeats are lost is not pinged in a tight loop.
		m.mu.Lock()
		m.last[n.ID] = m.now()
		m.mu.Unlock()
		return
	}
	m.mu.Lock()
	silent := silentFor(m.now(), m.last[n.ID], m.leaderSince)
	m.mu.Unlock()
	if silent <= m.limit() {
		return // a heartbeat arrived meanwhile
	}
	reason := fmt.Sprintf("no heartbeat for %s; ping-back failed (direct: %v; gossip: not alive) after %s",
		silent.Round(time.Millisecond), direct, m.now().Sub(start).Round(time.Millisecond))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := m.s.propose(cctx, "", fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: n.ID, State: structs.MonitorUnreachable, Reason: reason}); err != nil {
		m.log.Warn("mark unreachable failed", "node", n.Name, "error", err)
		return
	}
	m.log.Info("node unreachable", "node", n.Name, "reason", reason)
}

func (m *monitor) directPing(ctx context.Context, n structs.Node) error {
	if n.APIAddr == "" {
		return fmt.Errorf("no agent API address")
	}
	timeout := min(m.s.cfg.HeartbeatInterval, 5*time.Second)
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, api.NormalizeAddr(n.APIAddr)+"/v1/ping", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
