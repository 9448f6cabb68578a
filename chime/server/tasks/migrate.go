package tasks

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// advanceMigrations runs a migrate or evacuate task: one step at a time.
func (r *Runner) advanceMigrations(ctx context.Context, t structs.Task) error {
	idx := t.ModifyIndex
	for i := range t.Steps {
		st := &t.Steps[i]
		if st.State != structs.TaskRunning {
			continue
		}
		vm, err := r.state.VM(st.VMID)
		if err != nil {
			st.State, st.Error = structs.TaskFailed, "vm deleted"
			return r.put(ctx, t, idx)
		}
		if m := vm.Migration; m != nil && m.TaskID == t.ID {
			if vm.Held() {
				return nil // outcome unknown: settled on evidence, never by a timeout
			}
			if r.waited(waitKey(t.ID, vm.ID, fmt.Sprintf("migrate@%d", m.Generation))) > MigrationTimeout {
				// No result is not a failure: the hand-over may have
				// happened (uniqueness rule 8).
				_, err := r.propose.Propose(ctx, "", fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: t.ID, FromNode: m.From,
					Generation: m.Generation, Unknown: true,
					Error: fmt.Sprintf("no result from the source agent within %s of this leader's watch", MigrationTimeout)})
				return err
			}
			return nil // in flight
		}
		// Not in flight and not recorded: the order disappeared.
		st.State, st.Error = structs.TaskFailed, "migration order no longer in flight"
		return r.put(ctx, t, idx)
	}
	for i := range t.Steps {
		st := &t.Steps[i]
		if st.State != structs.TaskPending {
			continue
		}
		wasPending := t.State == structs.TaskPending
		t.State = structs.TaskRunning
		if err := r.startStep(ctx, &t, st); err != nil {
			if errors.Is(err, errRetryLater) {
				if wasPending {
					return r.put(ctx, t, idx) // records pending → running once
				}
				return nil
			}
			st.State, st.Error = structs.TaskFailed, err.Error()
		}
		return r.put(ctx, t, idx)
	}
	// Every step is done.
	var failed []string
	for _, st := range t.Steps {
		if st.State == structs.TaskFailed {
			failed = append(failed, structs.ShortID(st.VMID)+": "+st.Error)
		}
	}
	t.State = structs.TaskSucceeded
	if len(failed) > 0 {
		t.State, t.Error = structs.TaskFailed, fmt.Sprintf("%d of %d VMs not moved: %s", len(failed), len(t.Steps), strings.Join(failed, "; "))
	}
	return r.put(ctx, t, idx)
}

// startStep begins moving one VM: a live migration when it runs, a plain
// re-placement when it is stopped. The choice of destination and the
// proposal that uses it are one placement decision.
func (r *Runner) startStep(ctx context.Context, t *structs.Task, st *structs.TaskStep) error {
	vm, err := r.state.VM(st.VMID)
	if err != nil {
		return errors.New("vm deleted")
	}
	if vm.NodeID != st.From {
		return fmt.Errorf("vm moved to %s meanwhile", structs.ShortID(vm.NodeID))
	}
	return r.placer.Decide(func() error {
		to := st.To
		if to == "" {
			to, err = r.placer.Place(*vm, []string{st.From})
			if err != nil {
				return err
			}
		} else if err := r.placer.Check(*vm, to); err != nil {
			return err
		}
		st.To = to
		switch {
		case vm.State == structs.StateRunning:
			// live migration below
		case vm.DesiredState == structs.DesiredStopped && (vm.State == structs.StateStopped || vm.State == structs.StateCrashed):
			// Known stopped and kept stopped: move the definition. The source
			// agent has nothing to start, so no copy can run twice. That holds
			// only for the VM as read here: the placement is a compare-and-set
			// on its modify index (uniqueness rule 11), so a start or an
			// observation that landed meanwhile refuses it, and the step
			// decides again on the new state.
			_, err := r.propose.Propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: to, IfGeneration: vm.Generation,
				IfModifyIndex: vm.ModifyIndex, Reason: t.Kind + " of a stopped VM (task " + t.ID + ")"})
			if vmChanged(err) {
				r.log.Info("cold move lost to a concurrent change: deciding again", "vm", vm.Name, "task", t.ID, "error", err)
				st.To = ""
				return errRetryLater
			}
			if err != nil {
				return err
			}
			st.State = structs.TaskSucceeded
			return nil
		default:
			// State unknown, or stopped but about to be started again by its
			// agent: a cold move could let two copies overlap. Wait for the
			// agent to report, then decide (bounded).
			if r.waited(waitKey(t.ID, vm.ID, "decide")) > StepDecideTimeout {
				return fmt.Errorf("vm %s is %s (desired %s) on its node: neither a live migration nor a safe cold move is possible", vm.Name, vm.State, vm.DesiredState)
			}
			st.To = ""
			return errRetryLater
		}
		if _, err := r.propose.Propose(ctx, "", fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: t.ID, To: to, IfGeneration: vm.Generation}); err != nil {
			return err
		}
		st.State = structs.TaskRunning
		return nil
	})
}

// vmChanged reports whether err is the FSM's refusal of a decision because
// the VM it read changed meanwhile (the modify-index compare-and-set).
func vmChanged(err error) bool {
	var se *structs.Error
	return errors.As(err, &se) && se.Kind == structs.ErrConflict && se.Field == "modify_index"
}
