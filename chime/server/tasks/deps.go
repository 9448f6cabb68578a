package tasks

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Proposer applies a command to the replicated state: the server's Raft
// proposal on the leader, or fsm.Direct in tests. A refusal by the FSM
// (a lost compare-and-set is structs.ErrConflict) comes back as the error.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state the runner reads.
type State interface {
	Tasks() ([]structs.Task, error)
	Task(id string) (*structs.Task, error)
	VM(id string) (*structs.VM, error)
	Node(id string) (*structs.Node, error)
	VMsOnNode(nodeID string) ([]structs.VM, uint64, error)
	// Changed returns a channel closed at the next applied change.
	Changed() (<-chan struct{}, uint64)
}

// Clock reads the time the step timeouts are measured against. The runner
// only ever subtracts two of its own readings, taken while it leads (never
// a task's timestamps, which another server's clock may have written), so
// in production time.Now's monotonic reading is what counts: a wall-clock
// jump does not move a timeout.
type Clock interface {
	Now() time.Time
}

// Placer chooses and checks destinations (chime/server/placement). Decide
// holds the placement lock around fn, so a step's choice and its proposal
// are one decision that no create or pending placement interleaves.
type Placer interface {
	Decide(fn func() error) error
	Place(vm structs.VM, exclude []string) (string, error)
	Check(vm structs.VM, to string) error
}
