package heartbeat

import (
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// Silence is how long nodeID has been silent as far as this leader can
// tell: since its last heartbeat (or registration, or ping-back answer)
// arrived here, and never longer than this server has been leader — a new
// leader does not know when the last heartbeat arrived at its
// predecessor, so it counts from its own takeover. Automatic HA measures
// the isolation lease's deadline against it (structs.LeaseDeadline, with the margin).
func (m *Monitor) Silence(nodeID string) time.Duration {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.leaderSince.IsZero() {
		return 0 // not leading: nothing is known
	}
	return silentFor(now, m.last[nodeID], m.leaderSince)
}

// HoldSilent marks nodeID as being recovered if it has been silent for at
// least min: until release is called, its heartbeats are refused (a
// conflict, not acknowledged, the arrival not counted), so that no
// heartbeat can renew the agent's lease between the decision that the
// node is fenced and the placements that follow from it. ok is false, and
// nothing is held, when the node spoke within min.
func (m *Monitor) HoldSilent(nodeID string, min time.Duration) (release func(), ok bool) {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.leaderSince.IsZero() || silentFor(now, m.last[nodeID], m.leaderSince) < min || m.held[nodeID] {
		return func() {}, false
	}
	m.held[nodeID] = true
	return func() {
		m.mu.Lock()
		delete(m.held, nodeID)
		m.mu.Unlock()
	}, true
}

// heldForRecovery returns the refusal of a heartbeat of a node HoldSilent
// holds, or nil.
func (m *Monitor) heldForRecovery(n *structs.Node) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held[n.ID] {
		return structs.Conflict("node_id", "node %s is being recovered (its isolation lease expired): heartbeat refused, retry", n.Name)
	}
	return nil
}
