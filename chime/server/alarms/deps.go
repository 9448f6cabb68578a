package alarms

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Proposer applies a command to the replicated state: the server's Raft
// proposal on the leader, or fsm.Direct in tests.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state the alarmer reads.
type State interface {
	// NodesView lists every node from the FSM's derived view: a copy, no
	// bbolt read and no decoding.
	NodesView() []structs.Node
	Tasks() ([]structs.Task, error)
	// HeldVMs lists the VMs whose live-migration outcome is unknown, from
	// the FSM's index of them (no scan of every VM).
	HeldVMs() ([]structs.VM, error)
	Alarms() ([]fsm.AlarmRecord, error)
	// Changed returns a channel closed at the next applied change.
	Changed() (<-chan struct{}, uint64)
}

// Clock reads the time alarms are derived at (a failed task's alarm
// expires) and resolutions are stamped with.
type Clock interface {
	Now() time.Time
}
