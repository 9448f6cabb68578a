package server

import (
	"context"
	"net/http"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// migrateVM creates a migrate task; the task runner does the work.
func (s *Server) migrateVM(ctx context.Context, reqID string, vm *structs.VM, to string) (any, error) {
	if vm.NodeID == "" {
		return nil, structs.Conflict("id", "vm %s is not placed on any node (pending)", vm.Name)
	}
	if t := s.taskRunner.ActiveFor(vm.ID, ""); t != nil {
		return nil, structs.Conflict("id", "vm %s is already part of %s task %s", vm.Name, t.Kind, t.ID)
	}
	src, err := s.fsm.Node(vm.NodeID)
	if err != nil {
		return nil, err
	}
	if vm.State == structs.StateRunning && src.MonitorState == structs.MonitorUnreachable {
		return nil, structs.Conflict("id", "vm %s runs on node %s, which is unreachable: live migration needs its agent (drain and rebuild instead)", vm.Name, src.Name)
	}
	dest := ""
	if to != "" {
		n, err := s.fsm.ResolveNode(to)
		if err != nil {
			return nil, structs.NotFound("to", "destination: %v", err)
		}
		if n.ID == vm.NodeID {
			return nil, structs.Invalid("to", "vm %s already runs on node %s", vm.Name, n.Name)
		}
		if err := s.placer.Check(*vm, n.ID); err != nil {
			return nil, err
		}
		dest = n.ID
	} else if _, err := s.placer.Place(*vm, []string{vm.NodeID}); err != nil {
		return nil, structs.Conflict("to", "no destination for vm %s: %v", vm.Name, err)
	}
	t, err := s.taskRunner.Create(ctx, reqID, structs.Task{Kind: structs.TaskMigrate, VMID: vm.ID, NodeID: "",
		Steps: []structs.TaskStep{{VMID: vm.ID, From: vm.NodeID, To: dest, State: structs.TaskPending}}})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// evacuateNode live-migrates every VM away. The node is disabled first so
// that nothing new lands on it.
func (s *Server) evacuateNode(ctx context.Context, reqID string, n *structs.Node) (any, error) {
	if n.MonitorState == structs.MonitorUnreachable {
		return nil, structs.Conflict("id", "node %s is unreachable: live migration needs its agent (drain and rebuild instead)", n.Name)
	}
	if t := s.taskRunner.ActiveFor("", n.ID); t != nil {
		return nil, structs.Conflict("id", "node %s already has %s task %s running", n.Name, t.Kind, t.ID)
	}
	if n.ManagementState == structs.NodeEnabled {
		if _, err := s.propose(ctx, reqID+"-disable", fsm.CmdSetManagement, fsm.SetManagement{NodeID: n.ID, State: structs.NodeDisabled}); err != nil {
			return nil, err
		}
	}
	vms, _, err := s.fsm.VMsOnNode(n.ID)
	if err != nil {
		return nil, err
	}
	steps := []structs.TaskStep{}
	for _, vm := range vms {
		if t := s.taskRunner.ActiveFor(vm.ID, ""); t != nil {
			continue
		}
		steps = append(steps, structs.TaskStep{VMID: vm.ID, From: n.ID, State: structs.TaskPending})
	}
	return s.taskRunner.Create(ctx, reqID, structs.Task{Kind: structs.TaskEvacuate, NodeID: n.ID, Steps: steps})
}

// drainNode stops every VM on the node and keeps them stopped; the task
// finishes when the agent acknowledges (or the node had no VMs).
func (s *Server) drainNode(ctx context.Context, reqID string, n *structs.Node) (any, error) {
	if _, err := s.propose(ctx, reqID+"-drain", fsm.CmdSetManagement, fsm.SetManagement{NodeID: n.ID, State: structs.NodeDrained}); err != nil {
		return nil, err
	}
	vms, _, err := s.fsm.VMsOnNode(n.ID)
	if err != nil {
		return nil, err
	}
	steps := []structs.TaskStep{}
	for _, vm := range vms {
		steps = append(steps, structs.TaskStep{VMID: vm.ID, From: n.ID, State: structs.TaskRunning})
	}
	return s.taskRunner.Create(ctx, reqID, structs.Task{Kind: structs.TaskDrain, NodeID: n.ID, Steps: steps})
}

// rebuildNode recreates every VM of a drained node elsewhere. Uniqueness
// rule 3: only when the node is known to run none of them.
func (s *Server) rebuildNode(ctx context.Context, reqID string, n *structs.Node, confirmFenced bool) (any, error) {
	if n.ManagementState != structs.NodeDrained {
		return nil, structs.Conflict("id", "node %s is %s: rebuild needs a drained node (chime node drain %s)", n.Name, n.ManagementState, n.Name)
	}
	known := n.DrainAcked || n.LocalDrained || n.Fenced
	if !known && !confirmFenced {
		return nil, structs.Conflict("confirm_fenced", "node %s has not acknowledged the drain (its VMs may still run): "+
			"wait for the acknowledgement, run `chime agent drain` on the node, or power it off and pass --confirm-fenced", n.Name)
	}
	if confirmFenced && !n.Fenced {
		yes := true
		if _, err := s.propose(ctx, reqID+"-fence", fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: n.ID, Fenced: &yes}); err != nil {
			return nil, err
		}
	}
	// The whole rebuild is one placement decision: every VM's new node is
	// chosen over one read and proposed before anything else places.
	steps := []structs.TaskStep{}
	err := s.placer.Decide(func() error {
		vms, _, err := s.fsm.VMsOnNode(n.ID)
		if err != nil {
			return err
		}
		var reqs []scheduler.Request
		for _, vm := range vms {
			reqs = append(reqs, scheduler.Request{VM: vm, Exclude: []string{n.ID}})
		}
		placed, err := s.placer.PlaceAll(reqs)
		if err != nil {
			return err
		}
		for _, vm := range vms {
			to := placed[vm.ID]
			st := structs.TaskStep{VMID: vm.ID, From: n.ID, To: to, State: structs.TaskSucceeded}
			reason := "rebuild of node " + n.Name
			if to == "" {
				reason += ": no node fits, pending"
				st.Error = "no node fits: pending until capacity appears"
			}
			if _, err := s.propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: to, IfGeneration: vm.Generation, Reason: reason}); err != nil {
				st.State, st.Error = structs.TaskFailed, err.Error()
			}
			steps = append(steps, st)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	state := structs.TaskSucceeded
	for _, st := range steps {
		if st.State == structs.TaskFailed {
			state = structs.TaskFailed
		}
	}
	s.kickPlacement()
	return s.taskRunner.Create(ctx, reqID, structs.Task{Kind: structs.TaskRebuild, NodeID: n.ID, State: state, Steps: steps})
}

func (s *Server) handleGetTask(w http.ResponseWriter, r *http.Request) (any, error) {
	id := r.PathValue("id")
	tasks, err := s.fsm.Tasks()
	if err != nil {
		return nil, err
	}
	var match []structs.Task
	for _, t := range tasks {
		if t.ID == id {
			return t, nil
		}
		if len(id) >= 4 && len(t.ID) >= len(id) && t.ID[:len(id)] == id {
			match = append(match, t)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	if len(match) > 1 {
		return nil, structs.Invalid("task", "%q is ambiguous: give more characters", id)
	}
	return nil, structs.NotFound("task", "no task with id or id prefix %q", id)
}

// handleMigrated takes a source agent's migration result.
func (s *Server) handleMigrated(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	var rep api.MigrationReport
	if err := decode(r, &rep); err != nil {
		return nil, err
	}
	if err := structs.ValidateUUID("vm_id", rep.VMID); err != nil {
		return nil, err
	}
	vm, err := s.fsm.VM(rep.VMID)
	if err != nil {
		return nil, err
	}
	from := vm.NodeID
	if vm.Migration != nil {
		from = vm.Migration.From
	}
	if from != n.ID {
		return nil, structs.Forbidden("node %s reports a migration of vm %s, which is placed on %s", n.ID, vm.ID, from)
	}
	if _, err := s.propose(r.Context(), r.Header.Get(api.HeaderRequestID), fsm.CmdMigrationEnd, fsm.MigrationEnd{
		VMID: vm.ID, TaskID: rep.TaskID, FromNode: n.ID, Generation: rep.Generation, OK: rep.OK, Error: rep.Error}); err != nil {
		return nil, err
	}
	s.kickTasks()
	return map[string]bool{"recorded": true}, nil
}

// retriedTask answers a retried task request (same request id) with the
// task the first attempt created.
func (s *Server) retriedTask(reqID string) (*structs.Task, bool) {
	id, err, seen := s.fsm.Applied(reqID)
	if !seen || err != nil || id == "" {
		return nil, false
	}
	t, terr := s.fsm.Task(id)
	return t, terr == nil
}
