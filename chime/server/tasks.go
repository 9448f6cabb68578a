package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// migrationTimeout bounds one live migration step. The agent's own libvirt
// job timeout (10 min) is shorter, so the agent gives up first.
const migrationTimeout = 15 * time.Minute

// stepDecideTimeout bounds how long a step waits for a VM's state to be
// known before it fails.
const stepDecideTimeout = 2 * time.Minute

// errRetryLater leaves a step pending for the next round of the runner.
var errRetryLater = errors.New("retry later")

// taskLoop advances replicated tasks while this server is leader. A new
// leader picks up where the old one stopped: every decision is read from
// the replicated task and VM records.
func (s *Server) taskLoop(ctx context.Context) {
	for {
		ch, _ := s.fsm.Changed()
		tasks, err := s.fsm.Tasks()
		if err == nil {
			for _, t := range tasks {
				if ctx.Err() != nil {
					return
				}
				if t.State == structs.TaskPending || t.State == structs.TaskRunning {
					if err := s.advanceTask(ctx, t); err != nil && !errors.Is(err, structs.ErrConflict) {
						s.log.Named("tasks").Warn("task step failed", "task", t.ID, "kind", t.Kind, "error", err)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-s.taskKick:
		case <-time.After(2 * time.Second):
		}
	}
}

func (s *Server) kickTasks() {
	select {
	case s.taskKick <- struct{}{}:
	default:
	}
}

// putTask writes a task with compare-and-set on its modify index.
func (s *Server) putTask(ctx context.Context, t structs.Task, ifIndex uint64) error {
	_, err := s.propose(ctx, "", fsm.CmdPutTask, fsm.PutTask{Task: t, IfModifyIndex: ifIndex})
	return err
}

func (s *Server) advanceTask(ctx context.Context, t structs.Task) error {
	switch t.Kind {
	case structs.TaskMigrate, structs.TaskEvacuate:
		return s.advanceMigrations(ctx, t)
	case structs.TaskDrain:
		return s.advanceDrain(ctx, t)
	}
	return nil
}

// advanceMigrations runs a migrate or evacuate task: one step at a time.
func (s *Server) advanceMigrations(ctx context.Context, t structs.Task) error {
	idx := t.ModifyIndex
	for i := range t.Steps {
		st := &t.Steps[i]
		if st.State != structs.TaskRunning {
			continue
		}
		vm, err := s.fsm.VM(st.VMID)
		if err != nil {
			st.State, st.Error = structs.TaskFailed, "vm deleted"
			return s.putTask(ctx, t, idx)
		}
		if vm.Migration != nil && vm.Migration.TaskID == t.ID {
			if time.Since(t.Updated) > migrationTimeout {
				_, err := s.propose(ctx, "", fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: t.ID, FromNode: vm.Migration.From,
					Generation: vm.Migration.Generation, Error: fmt.Sprintf("no result from the source agent within %s", migrationTimeout)})
				return err
			}
			return nil // in flight
		}
		// Not in flight and not recorded: the order disappeared.
		st.State, st.Error = structs.TaskFailed, "migration order no longer in flight"
		return s.putTask(ctx, t, idx)
	}
	for i := range t.Steps {
		st := &t.Steps[i]
		if st.State != structs.TaskPending {
			continue
		}
		wasPending := t.State == structs.TaskPending
		t.State = structs.TaskRunning
		if err := s.startStep(ctx, &t, st); err != nil {
			if errors.Is(err, errRetryLater) {
				if wasPending {
					return s.putTask(ctx, t, idx) // records pending → running once
				}
				return nil
			}
			st.State, st.Error = structs.TaskFailed, err.Error()
		}
		return s.putTask(ctx, t, idx)
	}
	// Every step is done.
	var failed []string
	for _, st := range t.Steps {
		if st.State == structs.TaskFailed {
			failed = append(failed, st.VMID[:8]+": "+st.Error)
		}
	}
	t.State = structs.TaskSucceeded
	if len(failed) > 0 {
		t.State, t.Error = structs.TaskFailed, fmt.Sprintf("%d of %d VMs not moved: %s", len(failed), len(t.Steps), strings.Join(failed, "; "))
	}
	return s.putTask(ctx, t, idx)
}

// startStep begins moving one VM: a live migration when it runs, a plain
// re-placement when it is stopped.
func (s *Server) startStep(ctx context.Context, t *structs.Task, st *structs.TaskStep) error {
	vm, err := s.fsm.VM(st.VMID)
	if err != nil {
		return errors.New("vm deleted")
	}
	if vm.NodeID != st.From {
		return fmt.Errorf("vm moved to %s meanwhile", short8(vm.NodeID))
	}
	s.placeMu.Lock()
	defer s.placeMu.Unlock()
	to := st.To
	if to == "" {
		to, err = s.place(*vm, []string{st.From})
		if err != nil {
			return err
		}
	} else if err := s.checkDestination(*vm, to); err != nil {
		return err
	}
	st.To = to
	switch {
	case vm.State == structs.StateRunning:
		// live migration below
	case vm.DesiredState == structs.DesiredStopped && (vm.State == structs.StateStopped || vm.State == structs.StateCrashed):
		// Known stopped and kept stopped: move the definition. The source
		// agent has nothing to start, so no copy can run twice.
		if _, err := s.propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: to, IfGeneration: vm.Generation,
			Reason: t.Kind + " of a stopped VM (task " + t.ID + ")"}); err != nil {
			return err
		}
		st.State = structs.TaskSucceeded
		return nil
	default:
		// State unknown, or stopped but about to be started again by its
		// agent: a cold move could let two copies overlap. Wait for the
		// agent to report, then decide (bounded).
		if time.Since(t.Created) > stepDecideTimeout {
			return fmt.Errorf("vm %s is %s (desired %s) on its node: neither a live migration nor a safe cold move is possible", vm.Name, vm.State, vm.DesiredState)
		}
		st.To = ""
		return errRetryLater
	}
	if _, err := s.propose(ctx, "", fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: t.ID, To: to, IfGeneration: vm.Generation}); err != nil {
		return err
	}
	st.State = structs.TaskRunning
	return nil
}

// checkDestination checks that a named destination can take the VM.
func (s *Server) checkDestination(vm structs.VM, to string) error {
	nodes, err := s.fsm.Nodes()
	if err != nil {
		return err
	}
	vms, err := s.fsm.VMs()
	if err != nil {
		return err
	}
	var only []structs.Node
	for _, n := range nodes {
		if n.ID == to {
			only = append(only, n)
		}
	}
	if len(only) == 0 {
		return structs.NotFound("to", "node %s not found", to)
	}
	if _, err := scheduler.Place(only, vms, scheduler.Request{VM: vm}, s.schedOptions()); err != nil {
		return structs.Conflict("to", "node %s cannot take vm %s: %v", only[0].Name, vm.Name, err)
	}
	return nil
}

func short8(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// advanceDrain finishes a drain task once the agent acknowledged that
// every VM is stopped (or the node has no VM).
func (s *Server) advanceDrain(ctx context.Context, t structs.Task) error {
	n, err := s.fsm.Node(t.NodeID)
	if err != nil {
		t.State, t.Error = structs.TaskCancelled, "node removed"
		return s.putTask(ctx, t, t.ModifyIndex)
	}
	if n.ManagementState != structs.NodeDrained {
		t.State, t.Error = structs.TaskCancelled, "node "+n.ManagementState+" again"
		return s.putTask(ctx, t, t.ModifyIndex)
	}
	placed, _, _ := s.fsm.VMsOnNode(n.ID)
	if !n.DrainAcked && !n.LocalDrained && len(placed) > 0 {
		if t.State == structs.TaskPending {
			t.State = structs.TaskRunning
			return s.putTask(ctx, t, t.ModifyIndex)
		}
		return nil
	}
	t.State = structs.TaskSucceeded
	for i := range t.Steps {
		t.Steps[i].State = structs.TaskSucceeded
	}
	return s.putTask(ctx, t, t.ModifyIndex)
}

// newTask creates a task record through Raft and returns it.
func (s *Server) newTask(ctx context.Context, reqID string, t structs.Task) (*structs.Task, error) {
	if t.ID == "" {
		t.ID = uuid.NewString()
	}
	if t.State == "" {
		t.State = structs.TaskPending
	}
	if _, err := s.propose(ctx, reqID, fsm.CmdPutTask, fsm.PutTask{Task: t}); err != nil {
		return nil, err
	}
	s.kickTasks()
	return s.fsm.Task(t.ID)
}

// activeTaskFor returns a pending or running task touching the VM or node.
func (s *Server) activeTaskFor(vmID, nodeID string) *structs.Task {
	tasks, _ := s.fsm.Tasks()
	for _, t := range tasks {
		if t.State != structs.TaskPending && t.State != structs.TaskRunning {
			continue
		}
		if nodeID != "" && t.NodeID == nodeID {
			return &t
		}
		for _, st := range t.Steps {
			if vmID != "" && st.VMID == vmID && (st.State == structs.TaskPending || st.State == structs.TaskRunning) {
				return &t
			}
		}
	}
	return nil
}
