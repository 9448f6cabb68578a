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
	t := time.NewTicker(m.tick())
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

// tick is Run's check period: a tenth of the interval, between 50 ms and
// 1 s. Each check only walks the cached node list (due), so its cost is
// small; its period adds to the detection time (issue 14: at the seed
// interval of 15 s, a quarter of it was up to 3.75 s of the 50 s budget).
func (m *Monitor) tick() time.Duration {
	return min(max(m.interval/10, 50*time.Millisecond), time.Second)
}

// pingTimeout is the direct ping-back's timeout: one heartbeat interval,
// 5 s at most.
func (m *Monitor) pingTimeout() time.Duration { return min(m.interval, 5*time.Second) }

// pingFrom is the silence after which a node is pinged back: one ping
// timeout before the limit, so that a ping-back that times out (a frozen
// agent, a link that drops packets) ends when the limit is reached instead
// of a whole timeout after it (issue 14: the detection was limit + 5 s at
// the seed timing). The node has then missed missed−1 heartbeats at
// least; with one missed heartbeat allowed the ping-back starts at the
// limit, as before. It is marked unreachable only when the ping-back
// failed and it is silent beyond the limit when the ping-back ends
// (pingBack); a ping-back that fails earlier (a refused connection) is
// simply made again at the next check.
func (m *Monitor) pingFrom() time.Duration {
	lim := m.limit()
	return lim - min(m.pingTimeout(), lim-m.interval)
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

// due returns every node silent beyond pingFrom that is neither
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
		if silentFor(now, m.last[n.ID], m.leaderSince) <= m.pingFrom() {
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
	now := m.clock.Now()
	silent := silentFor(now, m.last[n.ID], m.leaderSince)
	m.mu.Unlock()
	if silent <= m.limit() {
		return // a heartbeat arrived meanwhile, or the ping-back failed before the limit: again at the next check
	}
	gossipSays := "not alive"
	if isWrong {
		gossipSays = "not asked"
	}
	reason := fmt.Sprintf("no heartbeat for %s; ping-back failed (direct: %v; gossip: %s) after %s",
		silent.Round(time.Millisecond), direct, gossipSays, m.clock.Now().Sub(start).Round(time.Millisecond))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := m.propose.Propose(cctx, "", fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: n.ID, State: structs.MonitorUnreachable, Reason: reason,
		LastHeartbeat: now.Add(-silent)}); err != nil {
		m.log.Warn("mark unreachable failed", "node", n.Name, "error", err)
		return
	}
	m.log.Info("node unreachable", "node", n.Name, "reason", reason)
}

// directPing asks the agent, waiting at most one heartbeat interval (5 s
// at most).
func (m *Monitor) directPing(ctx context.Context, n structs.Node) error {
	cctx, cancel := context.WithTimeout(ctx, m.pingTimeout())
	defer cancel()
	return m.pinger.Ping(cctx, n)
}
