package heartbeat

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Proposer applies a command through Raft (the server) or straight to an
// FSM (fsm.Direct, in tests). A refusal comes back as the error.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state the monitor reads (*fsm.FSM).
type State interface {
	Index() uint64
	Nodes() ([]structs.Node, error)
	VM(id string) (*structs.VM, error)
	VMsOnNode(nodeID string) ([]structs.VM, uint64, error)
	VMs() ([]structs.VM, error)
	// HeldVMs lists the VMs whose live-migration outcome is unknown, from
	// the FSM's index of them (no scan of every VM).
	HeldVMs() ([]structs.VM, error)
	// NodesView lists every node from the FSM's derived view (no decoding).
	NodesView() []structs.Node
	Node(id string) (*structs.Node, error)
	NodeIndex(nodeID string) uint64      // the node's desired-state index
	NodeSecretHash(nodeID string) string // a source's key of adoption proofs
}

// Clock is where the monitor reads the time.
type Clock interface{ Now() time.Time }

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Pinger asks a node's agent directly whether it is alive (the server's
// implementation is GET /v1/ping on the agent's API). ctx carries the
// ping-back's timeout. An answer counts only when CheckAnswer accepts it:
// a Pinger returns CheckAnswer's error for an answer from an agent that is
// not the node's (uniqueness rule 10).
type Pinger interface {
	Ping(ctx context.Context, n structs.Node) error
}

// Gossip is the gossip pool's liveness hint: whether the named member
// answered its last direct or indirect probes.
type Gossip interface {
	Reachable(nodeID string) bool
}

// Config is what a Monitor needs.
type Config struct {
	Interval time.Duration // agents' heartbeat interval
	Missed   int           // heartbeats a node may miss before it is pinged back
	Proposer Proposer
	State    State
	Clock    Clock // nil: SystemClock
	Pinger   Pinger
	Gossip   Gossip
	Logger   hclog.Logger // parent logger; the monitor logs as <parent>.heartbeat
}

// Monitor is the leader's heartbeat handling and node monitor. Heartbeat
// arrival times live only in this leader's memory; what a heartbeat
// changes, and the monitor's transitions, are written through Raft. A new
// leader starts every node's clock at its own election (Reset), so a
// leader change never causes a false unreachable.
type Monitor struct {
	log      hclog.Logger  // server.heartbeat
	interval time.Duration // agents' heartbeat interval
	missed   int           // heartbeats missed before a ping-back
	propose  Proposer      // where deltas and transitions go
	state    State         // the replicated state, read to build deltas
	clock    Clock         // every arrival and silence is measured on it
	pinger   Pinger        // the ping-back's direct half
	gossip   Gossip        // the ping-back's gossip half

	mu          sync.Mutex           // guards the three fields below
	last        map[string]time.Time // node id → arrival of its last heartbeat (or registration) at this leader
	pinging     map[string]bool      // node id → a ping-back is in flight
	refusedAt   map[string]time.Time // node id → when a refused registration was last recorded
	conflictAt  map[string]time.Time // node id → when an identity conflict was last recorded
	leaderSince time.Time            // when this server became leader: the grace period's start
	held        map[string]bool      // node id → being recovered: its heartbeats are refused (HoldSilent)
}

// New returns a monitor; Run starts its checks.
func New(cfg Config) *Monitor {
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	clock := cfg.Clock
	if clock == nil {
		clock = SystemClock{}
	}
	return &Monitor{log: logger.Named("heartbeat"), interval: cfg.Interval, missed: cfg.Missed,
		propose: cfg.Proposer, state: cfg.State, clock: clock, pinger: cfg.Pinger, gossip: cfg.Gossip,
		last: map[string]time.Time{}, pinging: map[string]bool{}, held: map[string]bool{}, refusedAt: map[string]time.Time{}, conflictAt: map[string]time.Time{}}
}

// Reset starts a new term of leadership: every node gets a full grace period.
func (m *Monitor) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leaderSince = m.clock.Now()
	m.last = map[string]time.Time{}
	m.pinging = map[string]bool{}
	m.held = map[string]bool{}
}

// Registered notes a registration as a sign of life.
func (m *Monitor) Registered(nodeID string) { m.arrived(nodeID) }

// Forget drops a removed node.
func (m *Monitor) Forget(nodeID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.last, nodeID)
}

func (m *Monitor) arrived(nodeID string) {
	m.mu.Lock()
	m.last[nodeID] = m.clock.Now()
	m.mu.Unlock()
}

// limit is how long a node may be silent before a ping-back.
func (m *Monitor) limit() time.Duration { return time.Duration(m.missed) * m.interval }

// Outcome is what a heartbeat changed that its answer must carry.
type Outcome struct {
	Proposed bool     // a node.heartbeat command was written
	Adopted  []string // VM ids whose placement moved to the node
	Rejected []string // VM ids whose adoption was refused: the agent destroys its copy
	// AppliedMigrations are the node's migration log entries the servers
	// applied (moved, held, released or refused for good): the agent
	// deletes exactly these.
	AppliedMigrations []structs.LocalMigration
	// DroppedAdoptions are VM ids of announced adoptions the agent must
	// drop: over (see droppedAdoptions), or expired and released.
	DroppedAdoptions []string
}

// Heartbeat takes one validated heartbeat of node n (authenticated: r is
// about n and nothing else). It notes the arrival, then writes what the
// heartbeat changes as one node.heartbeat command, or nothing when nothing
// changed.
func (m *Monitor) Heartbeat(ctx context.Context, n *structs.Node, r Report) (Outcome, error) {
	if err := m.heldForRecovery(n); err != nil {
		return Outcome{}, err
	}
	// The arrival counts even if the write below fails: the node is alive.
	m.arrived(n.ID)
	// One heartbeat reads each of its VMs several times (the delta, the
	// copies' judgement, the stale copies): once from the state, then from
	// this heartbeat's own cache.
	st := newReadCache(m.state)
	if _, _, err := st.VMsOnNode(n.ID); err != nil { // one transaction for the VMs placed here
		return Outcome{}, fmt.Errorf("heartbeat of node %s: %w", n.Name, err)
	}
	d, err := buildDelta(st, n, r, m.clock.Now())
	if err != nil {
		return Outcome{}, fmt.Errorf("heartbeat of node %s: %w", n.Name, err)
	}
	dropped, err := droppedAdoptions(st, n, r.Announced)
	if err != nil {
		return Outcome{}, fmt.Errorf("heartbeat of node %s: %w", n.Name, err)
	}
	for _, c := range r.ExpiredAdoptions {
		// Acknowledged once written (or when there is nothing to release).
		dropped = append(dropped, c.VMID)
	}
	if d == nil {
		return Outcome{DroppedAdoptions: dropped}, nil
	}
	res, err := m.propose.Propose(ctx, "", fsm.CmdHeartbeat, d)
	if err != nil {
		if d.Monitor != nil {
			m.log.Warn("record node state failed", "node", n.Name, "state", d.Monitor.State, "error", err)
		}
		return Outcome{}, fmt.Errorf("record heartbeat of node %s: %w", n.Name, err)
	}
	if t := d.Monitor; t != nil {
		m.log.Info("node state changed", "node", n.Name, "from", n.MonitorState, "to", t.State, "faults", t.Faults)
	}
	out := Outcome{Proposed: true, AppliedMigrations: r.Migrations, DroppedAdoptions: dropped}
	if h := res.Heartbeat; h != nil {
		out.Adopted, out.Rejected = h.Adopted, h.Rejected
	}
	return out, nil
}
