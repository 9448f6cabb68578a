package fsm

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/state"
	"github.com/chime-ha/chime/fsm/view"
)

// applyFunc decodes one command's payload and applies it; it returns the
// id of the object the command created or changed. A *structs.Error with a
// kind is a refusal (the transaction is rolled back and the refusal
// recorded); any other error is a fault that halts the FSM.
type applyFunc func(a *applier, payload json.RawMessage) (string, error)

// registry is every command type this version applies, with its apply
// function. Types are only ever added: an old log entry must replay.
var registry = map[CommandType]applyFunc{
	CmdRegisterNode:    typed((*applier).registerNode),
	CmdSetManagement:   typed((*applier).setManagement),
	CmdSetMonitor:      typed((*applier).setMonitor),
	CmdSetNodeFlags:    typed((*applier).setNodeFlags),
	CmdRemoveNode:      typed((*applier).removeNode),
	CmdResetSecret:     typed((*applier).resetSecret),
	CmdNodeIdentity:    typed((*applier).nodeIdentity),
	CmdHeartbeat:       typed((*applier).heartbeat),
	CmdCreateVM:        typed((*applier).createVM),
	CmdSetDesired:      typed((*applier).setDesired),
	CmdPlaceVM:         typed((*applier).placeVM),
	CmdDeleteVM:        typed((*applier).deleteVM),
	CmdObserve:         typed((*applier).observeCmd),
	CmdMigrationStart:  typed((*applier).migrationStart),
	CmdMigrationEnd:    typed((*applier).migrationEnd),
	CmdAdopt:           typed((*applier).adopt),
	CmdMigrationSettle: typed((*applier).migrationSettle),
	CmdPutTask:         typed((*applier).putTask),
	CmdEvent:           typed((*applier).appendEvent),
	CmdEvents:          typed((*applier).appendEvents),
	CmdAlarm:           typed((*applier).alarmTransition),
	CmdAlarmSent:       typed((*applier).alarmDelivered),
	CmdSetHAArmed:      typed((*applier).setHAArmed),
	CmdSetHABrake:      typed((*applier).setHABrake),
	CmdSetHA:           typed((*applier).setHA),
	CmdHARestartFailed: typed((*applier).haRestartFailed),
	CmdACLBootstrap:    typed((*applier).aclBootstrap),
	CmdACLTokenCreate:  typed((*applier).aclTokenCreate),
	CmdACLTokenDelete:  typed((*applier).aclTokenDelete),
	CmdPruneIncidents:  typed((*applier).pruneIncidents),
}

// typed turns an apply function over a payload type into an applyFunc. A
// payload that does not decode is a fault, not a refusal: our proposers
// encode it, so a replica that cannot decode it is not running the code
// that wrote it.
func typed[P any](fn func(*applier, P) (string, error)) applyFunc {
	return func(a *applier, raw json.RawMessage) (string, error) {
		var p P
		if err := json.Unmarshal(raw, &p); err != nil {
			return "", fmt.Errorf("undecodable %T payload: %w", p, err)
		}
		return fn(a, p)
	}
}

// applier applies one command inside one write transaction.
type applier struct {
	tx   *state.Tx
	res  *Result    // for command-specific outcomes (Result.Heartbeat)
	view *view.View // the derived view as of the start of this command
	// For the incident tracker (incidents.go): the alarm an
	// alarm.transition recorded, and the last heartbeat a node.set_monitor
	// carried.
	alarm         *structs.Alarm
	lastHeartbeat time.Time
}

// node returns an existing node or a not-found refusal.
func (a *applier) node(id string) (*structs.Node, error) {
	n, err := a.tx.Node(id)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, structs.NotFound("node_id", "node %q not found", id)
	}
	return n, nil
}

// vm returns an existing VM or a not-found refusal.
func (a *applier) vm(id string) (*structs.VM, error) {
	v, err := a.tx.VM(id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, structs.NotFound("vm_id", "vm %q not found", id)
	}
	return v, nil
}

// ev appends an event stamped with the command's index and time.
func (a *applier) ev(kind, nodeID, vmID, format string, args ...any) error {
	return a.tx.AppendEvent(structs.Event{Kind: kind, NodeID: nodeID, VMID: vmID, Message: fmt.Sprintf(format, args...)})
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
