package heartbeat

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// silentFor says how long a node has been silent as far as this leader can
// tell: never longer than this leader has been leader.
func silentFor(now, last, leaderSince time.Time) time.Duration {
	ref := last
	if leaderSince.After(ref) {
		ref = leaderSince
	}
	return now.Sub(ref)
}

// Run checks nodes until ctx ends (leadership lost). It starts a new term
// of leadership first (Reset). Each ping-back runs on its own goroutine, so
// one slow node never delays the checks of the others; Run waits for them
// before it returns.
func (m *Monitor) Run(ctx context.Context) {
	m.Reset()
	t := time.NewTicker(max(m.interval/4, 50*time.Millisecond))
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.check(ctx, &wg)
	}
}

// CheckOnce runs one round of checks with its ping-backs one after
// another, in node-id order, and returns when they are done: the step
// function of tests and of the simulator (integration/sim), which must not
// see goroutines whose interleaving depends on the scheduler. It must not
// run while Run does.
func (m *Monitor) CheckOnce(ctx context.Context) {
	due := m.due()
	sort.Slice(due, func(i, j int) bool { return due[i].ID < due[j].ID })
	for _, n := range due {
		m.pingBack(ctx, n)
	}
}

// check starts a ping-back on its own goroutine for every node that is
// due one, so that one slow node never delays the others.
func (m *Monitor) check(ctx context.Context, wg *sync.WaitGroup) {
	for _, n := range m.due() {
		wg.Add(1)
		go func(n structs.Node) {
			defer wg.Done()
			m.pingBack(ctx, n)
		}(n)
	}
}

// due returns every node silent beyond the limit that is neither
// unreachable already nor being pinged, and marks each as being pinged.
func (m *Monitor) due() []structs.Node {
	now := m.clock.Now()
	// The node list comes from the FSM's derived view: a copy, no bbolt
	// read and no decoding (decoding every node, 4 times per interval,
	// cost more than the heartbeats themselves at thousands of nodes).
	// What a ping-back then records is judged against the state again.
	nodes := m.state.NodesView()
	m.mu.Lock()
	defer m.mu.Unlock()
	var due []structs.Node
	for _, n := range nodes {
		if n.MonitorState == structs.MonitorUnreachable || m.pinging[n.ID] {
			continue
		}
		if silentFor(now, m.last[n.ID], m.leaderSince) <= m.limit() {
			continue
		}
		m.pinging[n.ID] = true
		due = append(due, n)
	}
	return due
}

// pingBack asks the node directly and through gossip (SWIM probes with
// indirect probes through other members). Both fail → unreachable.
func (m *Monitor) pingBack(ctx context.Context, n structs.Node) {
	defer func() {
		m.mu.Lock()
		delete(m.pinging, n.ID)
		m.mu.Unlock()
	}()
	start := m.clock.Now()
	direct := m.directPing(ctx, n)
	// An answer from an agent that is not the node's registered one proves
	// the node's agent is not there: gossip (where a member of the node's
	// name may be that very agent) does not outweigh it.
	wrong, isWrong := identityFailure(direct)
	if isWrong && wrong.Conflict() {
		m.identityConflict(ctx, &n, wrong.Error())
	}
	viaGossip := !isWrong && m.gossip.Reachable(n.ID)
	if direct == nil || viaGossip {
		m.log.Warn("heartbeats missing but the node answers", "node", n.Name, "direct_error", direct, "gossip_alive", viaGossip)
		// Count the answer as a sign of life for one more period, so that
		// a node whose heartbeats are lost is not pinged in a tight loop.
		m.arrived(n.ID)
		return
	}
	m.mu.Lock()
	silent := silentFor(m.clock.Now(), m.last[n.ID], m.leaderSince)
	m.mu.Unlock()
	if silent <= m.limit() {
		return // a heartbeat arrived meanwhile
	}
	gossipSays := "not alive"
	if isWrong {
		gossipSays = "not asked"
	}
	reason := fmt.Sprintf("no heartbeat for %s; ping-back failed (direct: %v; gossip: %s) after %s",
		silent.Round(time.Millisecond), direct, gossipSays, m.clock.Now().Sub(start).Round(time.Millisecond))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := m.propose.Propose(cctx, "", fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: n.ID, State: structs.MonitorUnreachable, Reason: reason}); err != nil {
		m.log.Warn("mark unreachable failed", "node", n.Name, "error", err)
		return
	}
	m.log.Info("node unreachable", "node", n.Name, "reason", reason)
}

// directPing asks the agent, waiting at most one heartbeat interval (5 s
// at most).
func (m *Monitor) directPing(ctx context.Context, n structs.Node) error {
	cctx, cancel := context.WithTimeout(ctx, min(m.interval, 5*time.Second))
	defer cancel()
	return m.pinger.Ping(cctx, n)
}
