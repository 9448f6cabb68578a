package endpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// VMOp is an operator's action on a VM's desired state (VMAction).
type VMOp string

// The VM actions. Migrate is MigrateVM: it takes a destination.
const (
	VMStart   VMOp = "start"
	VMStop    VMOp = "stop"
	VMRestart VMOp = "restart"
)

// CreateVM validates req and creates the VM, placed on a node when one
// fits (pending otherwise). A retry of a create that went through (same
// request id) answers with the VM it created, although the name is taken
// now; one that was refused answers the same refusal.
func (e *Endpoints) CreateVM(ctx context.Context, reqID string, req api.CreateVMRequest) (*structs.VM, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := structs.ValidateDisksUnder("disks", req.Disks, e.roots, e.exclude); err != nil {
		return nil, err
	}
	reqID = e.requestID(reqID)
	first, done, prev, perr := e.retriedCreate(reqID)
	if done {
		return prev, perr
	}
	if _, err := e.state.ResolveVM(req.Name); err == nil {
		return nil, structs.Conflict("name", "a VM named %q already exists", req.Name)
	}
	desired := structs.DesiredRunning
	if req.Stopped {
		desired = structs.DesiredStopped
	}
	vm := structs.VM{ID: e.ids.NewID(), Name: req.Name, DesiredState: desired, Spec: req.Spec()}

	// Placement and its proposal are one decision. The proposal carries
	// the capacity compare-and-set (fsm.Fit): of concurrent creates that
	// chose the same node's last free capacity, the FSM refuses the
	// later, which decides again over the newer view (up to
	// createAttempts times, then answers the conflict). Admission control
	// reads every VM, so a create it decides is exclusive.
	decide := e.placer.DecideShared
	admit := vm.DesiredState == structs.DesiredRunning && e.placer.NeedsAdmission(vm)
	if admit {
		decide = e.placer.Decide
	}
	var res *fsm.Result
	var err error
	for attempt := first; attempt < createAttempts; attempt++ {
		err = decide(func() error {
			nodeID, fit, err := e.placer.PlaceFit(vm, nil)
			if err != nil && !errors.Is(err, scheduler.ErrNoCapacity) {
				return err
			}
			if admit {
				if err := e.placer.Admit(vm, nodeID); err != nil {
					return err
				}
			}
			res, err = e.propose.Propose(ctx, attemptID(reqID, attempt), fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: nodeID, IfFits: fit})
			return err
		})
		if !lostRace(err) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return e.state.VM(res.ObjectID)
}

// createAttempts bounds how often a create whose placement lost its race
// (the FSM refused its capacity compare-and-set) decides again.
const createAttempts = 5

// attemptID is the request id of a create's attempt: the client's id for
// the first, a suffix for each decision taken again (a refusal is
// remembered under its request id, so a retry needs an id of its own).
func attemptID(reqID string, attempt int) string {
	if attempt == 0 {
		return reqID
	}
	return fmt.Sprintf("%s/%d", reqID, attempt)
}

// lostRace tells a refusal of the capacity compare-and-set.
func lostRace(err error) bool {
	return errors.Is(err, structs.ErrConflict) && structs.AsError(err).Field == fsm.FieldIfFits
}

// retriedCreate looks for earlier attempts of a create with this request
// id (a client's retry). done: one went through (the VM it created), or
// was refused for a reason other than a lost race (that refusal), or
// every attempt lost its race (the last refusal). Otherwise next is the
// first attempt not applied yet, where deciding resumes.
func (e *Endpoints) retriedCreate(reqID string) (next int, done bool, vm *structs.VM, err error) {
	for attempt := 0; attempt < createAttempts; attempt++ {
		id, aerr, seen := e.state.Applied(attemptID(reqID, attempt))
		switch {
		case !seen:
			return attempt, false, nil, nil
		case aerr == nil:
			vm, err := e.state.VM(id)
			return attempt, true, vm, err
		case !lostRace(aerr) || attempt == createAttempts-1:
			return attempt, true, nil, aerr
		}
	}
	return createAttempts, true, nil, nil // unreachable: the last attempt answers above
}

// VMAction sets the desired state of the VM ref names (a name, an id or a
// unique id prefix): start, stop, or restart (RestartVM).
func (e *Endpoints) VMAction(ctx context.Context, reqID, ref string, op VMOp) (*structs.VM, error) {
	vm, err := e.state.ResolveVM(ref)
	if err != nil {
		return nil, err
	}
	switch op {
	case VMStart, VMStop:
		state := structs.DesiredRunning
		if op == VMStop {
			state = structs.DesiredStopped
		}
		if err := e.admitted(vm, state, func() error {
			_, err := e.propose.Propose(ctx, e.requestID(reqID), fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: state})
			return err
		}); err != nil {
			return nil, err
		}
		return e.state.VM(vm.ID)
	case VMRestart:
		return e.restart(ctx, e.requestID(reqID), vm)
	}
	return nil, structs.NotFound("action", "unknown VM action %q (start, stop, restart, migrate)", op)
}

// restart stops a running VM, waits until its agent reports it stopped
// (RestartTimeout at most, on the clock), and starts it again. A VM that is
// not running is simply started. When the stop is not confirmed in time
// the VM is set running again (an operator asked for a restart, so it must
// come back) and the answer is ErrTimeout.
func (e *Endpoints) restart(ctx context.Context, reqID string, vm *structs.VM) (*structs.VM, error) {
	if vm.State == structs.StateRunning && vm.DesiredState == structs.DesiredRunning {
		if _, err := e.propose.Propose(ctx, reqID+"-stop", fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: structs.DesiredStopped}); err != nil {
			return nil, err
		}
		if !e.waitNotRunning(ctx, vm.ID) {
			what := "desired state is running again"
			if _, err := e.propose.Propose(ctx, reqID+"-start", fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: structs.DesiredRunning}); err != nil {
				what = fmt.Sprintf("setting it running again failed: %v", err)
			}
			return nil, &structs.Error{Kind: ErrTimeout, Field: "id",
				Message: fmt.Sprintf("vm %s: the agent did not report it stopped within %s; %s", vm.Name, fmtMinutes(RestartTimeout), what)}
		}
	}
	if err := e.admitted(vm, structs.DesiredRunning, func() error {
		_, err := e.propose.Propose(ctx, reqID+"-start", fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: structs.DesiredRunning})
		return err
	}); err != nil {
		return nil, err
	}
	return e.state.VM(vm.ID)
}

// admitted runs propose, which sets vm's desired state to state. Starting
// a stopped, placed ha VM makes it protected, so that start is admission
// control's decision (placement lock held, admission, propose); any other
// change runs propose as it is.
func (e *Endpoints) admitted(vm *structs.VM, state string, propose func() error) error {
	if !vm.Spec.HA || vm.NodeID == "" || state != structs.DesiredRunning || vm.DesiredState == structs.DesiredRunning {
		return propose()
	}
	return e.placer.Decide(func() error {
		cur, err := e.state.VM(vm.ID)
		if err != nil {
			return err
		}
		if cur.DesiredState != structs.DesiredRunning && cur.NodeID != "" {
			if err := e.placer.Admit(*cur, cur.NodeID); err != nil {
				return err
			}
		}
		return propose()
	})
}

// fmtMinutes writes a whole number of minutes as "2m" (time.Duration's
// String would say "2m0s").
func fmtMinutes(d time.Duration) string { return fmt.Sprintf("%dm", int(d.Minutes())) }

// waitNotRunning waits until the VM is no longer reported running (or is
// gone), re-reading it after every applied change, until the restart
// timeout passes or ctx ends; then it looks once more. It reports whether
// the VM stopped running.
func (e *Endpoints) waitNotRunning(ctx context.Context, vmID string) bool {
	stopped := func() bool {
		cur, err := e.state.VM(vmID)
		return err != nil || cur.State != structs.StateRunning
	}
	timeout := e.clock.After(RestartTimeout)
	for {
		ch, _ := e.state.Changed()
		if stopped() {
			return true
		}
		select {
		case <-ch:
		case <-timeout:
			return stopped()
		case <-ctx.Done():
			return stopped()
		}
	}
}

// DeleteVM deletes the VM ref names; its agent destroys the domain.
func (e *Endpoints) DeleteVM(ctx context.Context, reqID, ref string) error {
	vm, err := e.state.ResolveVM(ref)
	if err != nil {
		return err
	}
	_, err = e.propose.Propose(ctx, e.requestID(reqID), fsm.CmdDeleteVM, fsm.DeleteVM{VMID: vm.ID})
	return err
}

// MigrateVM checks that the VM ref names can be live-migrated (to the node
// to names, or wherever the scheduler finds room when to is empty) and
// creates a migrate task; the task runner does the work. A retry answers
// with the task the first attempt created.
func (e *Endpoints) MigrateVM(ctx context.Context, reqID, ref, to string) (*structs.Task, error) {
	vm, err := e.state.ResolveVM(ref)
	if err != nil {
		return nil, err
	}
	if t, ok := e.retriedTask(reqID); ok {
		return t, nil
	}
	reqID = e.requestID(reqID)
	if vm.NodeID == "" {
		return nil, structs.Conflict("id", "vm %s is not placed on any node (pending)", vm.Name)
	}
	if t := e.tasks.ActiveFor(vm.ID, ""); t != nil {
		return nil, structs.Conflict("id", "vm %s is already part of %s task %s", vm.Name, t.Kind, t.ID)
	}
	src, err := e.state.Node(vm.NodeID)
	if err != nil {
		return nil, err
	}
	if vm.State == structs.StateRunning && src.MonitorState == structs.MonitorUnreachable {
		return nil, structs.Conflict("id", "vm %s runs on node %s, which is unreachable: live migration needs its agent (drain and rebuild instead)", vm.Name, src.Name)
	}
	dest := ""
	if to != "" {
		n, err := e.state.ResolveNode(to)
		if err != nil {
			return nil, structs.NotFound("to", "destination: %v", err)
		}
		if n.ID == vm.NodeID {
			return nil, structs.Invalid("to", "vm %s already runs on node %s", vm.Name, n.Name)
		}
		if err := e.placer.Check(*vm, n.ID); err != nil {
			return nil, err
		}
		dest = n.ID
	} else if _, err := e.placer.Place(*vm, []string{vm.NodeID}); err != nil {
		return nil, structs.Conflict("to", "no destination for vm %s: %v", vm.Name, err)
	}
	return e.tasks.Create(ctx, reqID, structs.Task{ID: e.ids.NewID(), Kind: structs.TaskMigrate, VMID: vm.ID,
		Steps: []structs.TaskStep{{VMID: vm.ID, From: vm.NodeID, To: dest, State: structs.TaskPending}}})
}
