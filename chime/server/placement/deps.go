package placement

import (
	"context"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Proposer applies a command to the replicated state: the server's Raft
// proposal on the leader, or fsm.Direct in tests. A refusal by the FSM
// comes back as the error.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state placement reads.
type State interface {
	Nodes() ([]structs.Node, error)
	VMs() ([]structs.VM, error)
	VM(id string) (*structs.VM, error)
	// Placement is one read of the derived view: the nodes and each
	// node's usage, the VMs in skip left out (fsm.FSM.Placement).
	Placement(skip ...string) ([]structs.Node, map[string]structs.NodeUsage)
	// Ranked walks the view's free-capacity index for placing VM vmID
	// (fsm.FSM.Ranked, scheduler.Walk); false when vmID is placed on a
	// node it may be placed on, not in exclude.
	Ranked(vmID string, exclude []string, binpack bool, memMiB int64, visit func(n *structs.Node, u *structs.NodeUsage) bool) bool
	// PendingVMs lists the unplaced VMs, sorted by name, and an epoch that
	// grows whenever one of them could now fit or be admitted.
	PendingVMs() ([]structs.VM, uint64, error)
	// ProtectedVMs lists the protected VMs, sorted by name, from an index.
	ProtectedVMs() ([]structs.VM, error)
	// PlacementEpoch is PendingVMs' epoch alone.
	PlacementEpoch() uint64
	// Changed returns a channel closed at the next applied change.
	Changed() (<-chan struct{}, uint64)
}
