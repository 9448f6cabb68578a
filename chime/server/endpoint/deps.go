package endpoint

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// Proposer applies a command to the replicated state: the server's Raft
// proposal on the leader, or fsm.Direct in tests and the simulator. A
// refusal by the FSM comes back as the error. An empty reqID gets a fresh
// one from the proposer.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state the endpoints read (*fsm.FSM).
type State interface {
	Node(id string) (*structs.Node, error)
	NodeSecretHash(nodeID string) string
	ResolveNode(ref string) (*structs.Node, error)
	VM(id string) (*structs.VM, error)
	VMs() ([]structs.VM, error)
	// MigratingVMs lists the VMs with a live migration recorded, from the
	// FSM's index of them (no scan of every VM).
	MigratingVMs() ([]structs.VM, error)
	VMsOnNode(nodeID string) ([]structs.VM, uint64, error)
	ResolveVM(ref string) (*structs.VM, error)
	Task(id string) (*structs.Task, error)
	ACLTokens() ([]structs.ACLToken, error)
	ACLTokenByHash(hash string) (*structs.ACLToken, error)
	ACLBootstrapIndex() uint64
	// Applied says what a request id was applied as, so that a retry
	// answers like the first attempt.
	Applied(reqID string) (objectID string, err error, seen bool)
	// Changed returns a channel closed at the next applied change.
	Changed() (<-chan struct{}, uint64)
}

// Placer takes placement decisions (chime/server/placement). Decide holds
// the placement lock around fn, so that a create's choice and its proposal
// are one decision.
type Placer interface {
	Decide(fn func() error) error
	// DecideShared runs a decision whose proposals carry the capacity
	// compare-and-set (PlaceFit) concurrently with other such decisions.
	DecideShared(fn func() error) error
	// NeedsAdmission tells whether creating vm desired running is
	// admission control's decision (then: Decide, Admit).
	NeedsAdmission(vm structs.VM) bool
	Place(vm structs.VM, exclude []string) (string, error)
	PlaceFit(vm structs.VM, exclude []string) (string, *fsm.Fit, error)
	PlaceAll(reqs []scheduler.Request) (map[string]string, error)
	Check(vm structs.VM, to string) error
	// Admit is admission control (--ha-tolerate-failures) for a protected
	// VM about to be placed on nodeID; call it inside Decide.
	Admit(vm structs.VM, nodeID string) error
	// Kick wakes the pending-VM loop: capacity may have appeared.
	Kick()
}

// Tasks creates and looks up replicated tasks (chime/server/tasks).
type Tasks interface {
	Create(ctx context.Context, reqID string, t structs.Task) (*structs.Task, error)
	ActiveFor(vmID, nodeID string) *structs.Task
	// Kick wakes the runner: a task was created or a step's result arrived.
	Kick()
}

// Monitor is the leader's heartbeat handling (chime/server/heartbeat).
type Monitor interface {
	Registered(nodeID string)
	// RegistrationRefused notes a registration as node n, from the agent
	// API address apiAddr, refused for want of the node's secret.
	RegistrationRefused(ctx context.Context, n *structs.Node, apiAddr string)
	// IdentityMismatch notes a registration as node n, from apiAddr, that
	// presented the join credential with another host identity than the
	// node is bound to (differs names the facts): a second host claims n.
	IdentityMismatch(ctx context.Context, n *structs.Node, apiAddr, differs string)
	Forget(nodeID string)
	Heartbeat(ctx context.Context, n *structs.Node, r heartbeat.Report) (heartbeat.Outcome, error)
}

// Clock bounds the waits an operation makes for an agent (a restart waits
// for the VM to be reported stopped). The server's clock is the wall
// clock; the simulator's fires when simulated time passes.
type Clock interface {
	After(d time.Duration) <-chan time.Time
}

// IDs makes the ids and secrets the endpoints hand out: uuids for VMs and
// tasks, node secrets for agents that register without one. RandomIDs is
// production's; a test or the simulator injects a deterministic source.
type IDs interface {
	NewID() string
	NewSecret() string
}

// AgentConfig is what every register and heartbeat answer carries: the
// timing agents must keep and the servers' gossip addresses.
type AgentConfig interface {
	Timing() api.Timing
	GossipAddrs() []string
}
