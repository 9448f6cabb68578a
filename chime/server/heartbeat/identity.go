package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Identity (uniqueness rule 10): the ping-back counts only an answer from
// the node it pings, and the monitor records evidence that another agent
// claims a node (node.identity: an event, and for a conflict the
// NodeIdentityConflict alarm).

// identityRefresh is how often the same identity evidence about a node is
// written again: often enough to keep its alarm firing while the evidence
// lasts (alarms.IdentityConflictAlarmFor), rarely enough that an agent
// retrying its registration does not fill the log.
const identityRefresh = 10 * time.Minute

// identityMinGap is the least time between two conflict records of one
// node, whatever their evidence: registrations are not authenticated, so
// a stream of them from ever new addresses must not become a stream of
// Raft writes.
const identityMinGap = time.Minute

// IdentityError is a ping-back answered by an agent that is not the node
// pinged: another node answered at its address, or the node's own id
// answered from an agent the servers have not registered (it lost its data
// dir and its registration is refused). Either way the ping-back failed,
// whatever gossip says: the answer itself shows the node's registered agent
// is not there.
type IdentityError struct {
	Node     string // name of the node pinged
	Addr     string // where it was pinged
	Answered string // node id that answered when it is another node's; "" when the node's own id answered
}

func (e *IdentityError) Error() string {
	if e.Answered != "" {
		return fmt.Sprintf("the agent at %s answered as node %s, not as node %s", e.Addr, e.Answered, e.Node)
	}
	return fmt.Sprintf("the agent at %s answers as node %s but is not registered (its data dir lost? see `chime node reset-secret %s`)", e.Addr, e.Node, e.Node)
}

// Conflict reports whether another node's agent answered: a second agent
// answering for the node, which raises an alarm.
func (e *IdentityError) Conflict() bool { return e.Answered != "" }

// CheckAnswer judges an agent's answer to the ping-back of node n: nil when
// it is n's registered agent, else an *IdentityError. registered is what
// the agent said (nil: an agent too old to say, judged by its node id
// only). Every Pinger calls it on the answer it got.
func CheckAnswer(n structs.Node, nodeID string, registered *bool) error {
	switch {
	case nodeID != n.ID:
		answered := nodeID
		if answered == "" {
			answered = "(none)"
		}
		return &IdentityError{Node: n.Name, Addr: n.APIAddr, Answered: answered}
	case registered != nil && !*registered:
		return &IdentityError{Node: n.Name, Addr: n.APIAddr}
	}
	return nil
}

// RegistrationRefused notes that an agent registering as node n from
// apiAddr was refused: it did not present the node's secret. From n's own
// address (or while n is unreachable) that is an agent that lost its data
// dir: an event. From another address while n is alive it is a second
// agent claiming the node: a conflict.
func (m *Monitor) RegistrationRefused(ctx context.Context, n *structs.Node, apiAddr string) {
	now := m.clock.Now()
	m.mu.Lock()
	alive := n.MonitorState != structs.MonitorUnreachable && silentFor(now, m.last[n.ID], m.leaderSince) <= m.limit()
	m.mu.Unlock()
	if apiAddr != n.APIAddr && alive {
		m.identityConflict(ctx, n, fmt.Sprintf("an agent at %s registered as the node without its secret while the node heartbeats from %s", apiAddr, n.APIAddr))
		return
	}
	m.mu.Lock()
	if at, ok := m.refusedAt[n.ID]; ok && now.Sub(at) < identityRefresh {
		m.mu.Unlock()
		return
	}
	m.refusedAt[n.ID] = now
	m.mu.Unlock()
	m.proposeIdentity(ctx, n, fsm.IdentityRefused,
		fmt.Sprintf("agent at %s (its data dir lost?); `chime node reset-secret %s` lets it register with a new secret", apiAddr, n.Name))
}

// IdentityMismatch notes that an agent registering as node n from apiAddr
// presented the join credential but another host identity than the node
// is bound to (differs): a second host claims the node, a conflict
// whatever n's state.
func (m *Monitor) IdentityMismatch(ctx context.Context, n *structs.Node, apiAddr, differs string) {
	m.identityConflict(ctx, n, fmt.Sprintf("an agent at %s registered as the node with the join credential but another host identity (%s)", apiAddr, differs))
}

// identityConflict records that another agent claims n, unless the same
// evidence was recorded less than identityRefresh ago.
func (m *Monitor) identityConflict(ctx context.Context, n *structs.Node, detail string) {
	now := m.clock.Now()
	if n.IdentityConflict == detail && now.Sub(n.IdentityConflictAt) < identityRefresh {
		return
	}
	m.mu.Lock()
	if at, ok := m.conflictAt[n.ID]; ok && now.Sub(at) < identityMinGap {
		m.mu.Unlock()
		return
	}
	m.conflictAt[n.ID] = now
	m.mu.Unlock()
	m.proposeIdentity(ctx, n, fsm.IdentityConflict, detail)
}

func (m *Monitor) proposeIdentity(ctx context.Context, n *structs.Node, kind, detail string) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := m.propose.Propose(cctx, "", fsm.CmdNodeIdentity, fsm.NodeIdentity{NodeID: n.ID, Kind: kind, Detail: detail}); err != nil {
		m.log.Warn("record node identity evidence failed", "node", n.Name, "kind", kind, "error", err)
		return
	}
	if kind == fsm.IdentityConflict {
		m.log.Error("another agent claims the node", "node", n.Name, "detail", detail)
	} else {
		m.log.Warn("registration refused", "node", n.Name, "detail", detail)
	}
}

// identityFailure returns the ping-back's error as an *IdentityError when
// it is one.
func identityFailure(err error) (*IdentityError, bool) {
	var ie *IdentityError
	ok := errors.As(err, &ie)
	return ie, ok
}
