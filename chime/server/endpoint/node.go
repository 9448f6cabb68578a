package endpoint

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// NodeOp is an operator's action on a node (NodeAction).
type NodeOp string

// The node actions.
const (
	NodeEnable   NodeOp = "enable"   // accept new VMs again; releases a local drain
	NodeDisable  NodeOp = "disable"  // accept no new VMs
	NodeDrain    NodeOp = "drain"    // stop every VM on the node and keep them stopped
	NodeEvacuate NodeOp = "evacuate" // live-migrate every VM away
	NodeRebuild  NodeOp = "rebuild"  // recreate a drained node's VMs elsewhere
	// NodeResetSecret lets the next registration as the node set a new
	// secret: its agent lost its data dir (uniqueness rule 10).
	NodeResetSecret NodeOp = "reset-secret"
)

// NodeResult is what a node action answers: the node as it is now (enable,
// disable), or the task the action created (drain, evacuate, rebuild).
type NodeResult struct {
	Node *structs.Node
	Task *structs.Task
}

// NodeAction carries out op on the node ref names (a name, an id or a
// unique id prefix). confirmFenced is the operator's statement, for a
// rebuild, that the node is powered off (--confirm-fenced). A retried
// drain, evacuate or rebuild (same request id) answers with the task the
// first attempt created.
func (e *Endpoints) NodeAction(ctx context.Context, reqID, ref string, op NodeOp, confirmFenced bool) (NodeResult, error) {
	n, err := e.state.ResolveNode(ref)
	if err != nil {
		return NodeResult{}, err
	}
	var t *structs.Task
	switch op {
	case NodeEnable, NodeDisable:
		return e.setManagement(ctx, e.requestID(reqID), n, op)
	case NodeResetSecret:
		return e.resetSecret(ctx, e.requestID(reqID), n)
	case NodeDrain, NodeEvacuate, NodeRebuild:
		if first, ok := e.retriedTask(reqID); ok {
			return NodeResult{Task: first}, nil
		}
		reqID = e.requestID(reqID)
		switch op {
		case NodeDrain:
			t, err = e.drain(ctx, reqID, n)
		case NodeEvacuate:
			t, err = e.evacuate(ctx, reqID, n)
		default:
			t, err = e.rebuild(ctx, reqID, n, confirmFenced)
		}
	default:
		return NodeResult{}, structs.NotFound("action", "unknown node action %q (enable, disable, drain, rebuild, evacuate, reset-secret)", op)
	}
	if err != nil {
		return NodeResult{}, err
	}
	return NodeResult{Task: t}, nil
}

// resetSecret lets the next registration as n set a new secret. The
// current secret keeps working until then.
func (e *Endpoints) resetSecret(ctx context.Context, reqID string, n *structs.Node) (NodeResult, error) {
	if _, err := e.propose.Propose(ctx, reqID, fsm.CmdResetSecret, fsm.ResetSecret{NodeID: n.ID}); err != nil {
		return NodeResult{}, err
	}
	cur, err := e.state.Node(n.ID)
	if err != nil {
		return NodeResult{}, err
	}
	return NodeResult{Node: cur}, nil
}

// setManagement enables or disables the node. Enabling wakes the pending
// loop: the node may take VMs that fit nowhere else.
//
// The change is a compare-and-set on the node as read here (uniqueness
// rule 11): when the node changed meanwhile (a concurrent drain, a rebuild's
// fence, a heartbeat that moved its drain evidence) the FSM refuses it and
// the operator gets a conflict naming what changed. Enabling also releases
// the agent's local drain, if it has one the operator has not released
// yet, even on a node that is enabled already (a local drain changes no
// management state).
func (e *Endpoints) setManagement(ctx context.Context, reqID string, n *structs.Node, op NodeOp) (NodeResult, error) {
	state := structs.NodeEnabled
	if op == NodeDisable {
		state = structs.NodeDisabled
	}
	cmd := fsm.SetManagement{NodeID: n.ID, State: state, IfModifyIndex: n.ModifyIndex}
	if op == NodeEnable && n.LocalDrainID != "" && n.LocalDrainID != n.ReleasedDrainID {
		cmd.ReleaseDrainID = n.LocalDrainID
	}
	if _, err := e.propose.Propose(ctx, reqID, fsm.CmdSetManagement, cmd); err != nil {
		return NodeResult{}, err
	}
	if op == NodeEnable {
		e.placer.Kick()
	}
	cur, err := e.state.Node(n.ID)
	return NodeResult{Node: cur}, err
}

// evacuate live-migrates every VM away. The node is disabled first so
// that nothing new lands on it.
func (e *Endpoints) evacuate(ctx context.Context, reqID string, n *structs.Node) (*structs.Task, error) {
	if n.MonitorState == structs.MonitorUnreachable {
		return nil, structs.Conflict("id", "node %s is unreachable: live migration needs its agent (drain and rebuild instead)", n.Name)
	}
	if t := e.tasks.ActiveFor("", n.ID); t != nil {
		return nil, structs.Conflict("id", "node %s already has %s task %s running", n.Name, t.Kind, t.ID)
	}
	if n.ManagementState == structs.NodeEnabled {
		if _, err := e.propose.Propose(ctx, reqID+"-disable", fsm.CmdSetManagement,
			fsm.SetManagement{NodeID: n.ID, State: structs.NodeDisabled, IfModifyIndex: n.ModifyIndex}); err != nil {
			return nil, err
		}
	}
	vms, _, err := e.state.VMsOnNode(n.ID)
	if err != nil {
		return nil, err
	}
	steps := []structs.TaskStep{}
	for _, vm := range vms {
		if t := e.tasks.ActiveFor(vm.ID, ""); t != nil {
			continue
		}
		steps = append(steps, structs.TaskStep{VMID: vm.ID, From: n.ID, State: structs.TaskPending})
	}
	return e.tasks.Create(ctx, reqID, structs.Task{ID: e.ids.NewID(), Kind: structs.TaskEvacuate, NodeID: n.ID, Steps: steps})
}

// drain stops every VM on the node and keeps them stopped; the task
// finishes when the agent acknowledges (or the node had no VMs).
func (e *Endpoints) drain(ctx context.Context, reqID string, n *structs.Node) (*structs.Task, error) {
	if _, err := e.propose.Propose(ctx, reqID+"-drain", fsm.CmdSetManagement,
		fsm.SetManagement{NodeID: n.ID, State: structs.NodeDrained, IfModifyIndex: n.ModifyIndex}); err != nil {
		return nil, err
	}
	vms, _, err := e.state.VMsOnNode(n.ID)
	if err != nil {
		return nil, err
	}
	steps := []structs.TaskStep{}
	for _, vm := range vms {
		steps = append(steps, structs.TaskStep{VMID: vm.ID, From: n.ID, State: structs.TaskRunning})
	}
	return e.tasks.Create(ctx, reqID, structs.Task{ID: e.ids.NewID(), Kind: structs.TaskDrain, NodeID: n.ID, Steps: steps})
}

// runningHere names a VM placed on n whose last observation says it runs
// on n, or "" when none does.
func (e *Endpoints) runningHere(n *structs.Node) (string, error) {
	vms, _, err := e.state.VMsOnNode(n.ID)
	if err != nil {
		return "", fmt.Errorf("read vms on node %s: %w", n.Name, err)
	}
	for _, vm := range vms {
		if o := vm.Observed; o != nil && o.NodeID == n.ID && o.State == structs.StateRunning {
			return vm.Name, nil
		}
	}
	return "", nil
}

// rebuild recreates every VM of a drained node elsewhere. Uniqueness rule
// 3: only when the node is known to run none of them — it acknowledged the
// drain, reported a local drain, or the operator confirmed it fenced.
func (e *Endpoints) rebuild(ctx context.Context, reqID string, n *structs.Node, confirmFenced bool) (*structs.Task, error) {
	if n.ManagementState != structs.NodeDrained {
		return nil, structs.Conflict("id", "node %s is %s: rebuild needs a drained node (chime node drain %s)", n.Name, n.ManagementState, n.Name)
	}
	known := n.Fenced
	if n.DrainAcked || n.LocalDrained {
		// Evidence counts only while it is still valid (uniqueness rule
		// 6): the FSM withdraws it with the heartbeat that lists a running
		// VM; a VM recorded as running here voids it all the same.
		running, err := e.runningHere(n)
		if err != nil {
			return nil, err
		}
		known = known || running == ""
	}
	if !known && !confirmFenced {
		return nil, structs.Conflict("confirm_fenced", "node %s has not acknowledged the drain (its VMs may still run): "+
			"wait for the acknowledgement, run `chime agent drain` on the node, or power it off and pass --confirm-fenced", n.Name)
	}
	if confirmFenced && !n.Fenced {
		yes := true
		if _, err := e.propose.Propose(ctx, reqID+"-fence", fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: n.ID, Fenced: &yes, FenceUnreachable: true, IfModifyIndex: n.ModifyIndex}); err != nil {
			return nil, err
		}
		// The decision below stands on the node as the fence left it: still
		// drained and now fenced.
		cur, err := e.state.Node(n.ID)
		if err != nil {
			return nil, err
		}
		if cur.ManagementState != structs.NodeDrained || !cur.Fenced {
			return nil, structs.Conflict("node_modify_index", "node %s changed during the rebuild (management %s, fenced %v): nothing was moved; decide again",
				n.Name, cur.ManagementState, cur.Fenced)
		}
		n = cur
	}
	// The whole rebuild is one placement decision: every VM's new node is
	// chosen over one read and proposed before anything else places. Each
	// placement is a compare-and-set on what the decision read (uniqueness
	// rule 11): the VM (generation, modify index) and the node (its modify
	// index: management state and drain evidence). A node or VM changed
	// meanwhile (an enable, a heartbeat that withdrew the evidence, a VM
	// started again) stops the rebuild with a conflict; what was placed
	// before stays placed: each of those decisions was right when it
	// committed.
	steps := []structs.TaskStep{}
	var stopped error
	err := e.placer.Decide(func() error {
		vms, _, err := e.state.VMsOnNode(n.ID)
		if err != nil {
			return err
		}
		// A VM migrating away from this node can only run on the
		// migration's destination, or nowhere, now that this node is
		// known to run nothing: it goes there (uniqueness rule 8); one
		// migrating here stays on its source.
		if err := e.settleFenced(ctx, n, &steps); err != nil {
			return err
		}
		vms = slices.DeleteFunc(vms, func(vm structs.VM) bool { return vm.Migration != nil })
		// A VM a node-local migration may have brought to another node is
		// held (uniqueness rule 7): "nothing runs on this node" says
		// nothing about where it went. Unless that node is fenced too.
		held := map[string]string{}
		var reqs []scheduler.Request
		for _, vm := range vms {
			if why, err := e.heldElsewhere(vm); err != nil {
				return err
			} else if why != "" {
				held[vm.ID] = why
				continue
			}
			reqs = append(reqs, scheduler.Request{VM: vm, Exclude: []string{n.ID}})
		}
		placed, err := e.placer.PlaceAll(reqs)
		if err != nil {
			return err
		}
		for _, vm := range vms { // in the state's order, never the map's
			if why := held[vm.ID]; why != "" {
				steps = append(steps, structs.TaskStep{VMID: vm.ID, From: n.ID, State: structs.TaskFailed, Error: why})
				continue
			}
			to := placed[vm.ID]
			st := structs.TaskStep{VMID: vm.ID, From: n.ID, To: to, State: structs.TaskSucceeded}
			reason := "rebuild of node " + n.Name
			if to == "" {
				reason += ": no node fits, pending"
				st.Error = "no node fits: pending until capacity appears"
			}
			switch {
			case stopped != nil:
				st.State, st.Error = structs.TaskFailed, "not moved: "+stopped.Error()
			default:
				// A fresh id for each placement: it is decided from the state
				// of this attempt, and the compare-and-sets refuse a stale one.
				_, err := e.propose.Propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: to, IfGeneration: vm.Generation,
					IfModifyIndex: vm.ModifyIndex, IfNodeModifyIndex: n.ModifyIndex, Reason: reason})
				if err != nil {
					st.State, st.Error = structs.TaskFailed, err.Error()
				}
				if readChanged(err) {
					stopped = err
				}
			}
			steps = append(steps, st)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	state := structs.TaskSucceeded
	moved := 0
	for _, st := range steps {
		if st.State == structs.TaskFailed {
			state = structs.TaskFailed
		} else {
			moved++
		}
	}
	if stopped != nil && moved == 0 {
		// Lost cleanly: nothing moved, nothing recorded.
		return nil, stopped
	}
	e.placer.Kick()
	t, err := e.tasks.Create(ctx, reqID, structs.Task{ID: e.ids.NewID(), Kind: structs.TaskRebuild, NodeID: n.ID, State: state, Steps: steps})
	if err != nil {
		return nil, err
	}
	if stopped != nil {
		return t, structs.Conflict(structs.AsError(stopped).Field, "rebuild of node %s stopped after %d of %d VMs (task %s records which): %s",
			n.Name, moved, len(steps), t.ID, stopped.Error())
	}
	return t, nil
}

// readChanged reports whether err is the FSM's refusal of a decision
// because what it read changed: the node or the VM (the modify-index
// compare-and-sets).
func readChanged(err error) bool {
	var se *structs.Error
	return errors.As(err, &se) && se.Kind == structs.ErrConflict && (se.Field == "node_modify_index" || se.Field == "modify_index")
}

// settleFenced settles every live migration from or to node n, which is
// known to run nothing (acknowledged drain, local drain or fence): the VM
// runs at the other end or nowhere, so it is placed there. Each settles
// in one step of the rebuild task.
func (e *Endpoints) settleFenced(ctx context.Context, n *structs.Node, steps *[]structs.TaskStep) error {
	all, err := e.state.MigratingVMs() // the FSM's index: no read of every VM per rebuild
	if err != nil {
		return err
	}
	for _, vm := range all {
		m := vm.Migration
		if m == nil || (m.From != n.ID && m.To != n.ID) {
			continue
		}
		where, reason := m.To, fmt.Sprintf("node %s, its source, is known to run nothing (rebuild)", n.Name)
		if m.From != n.ID {
			where, reason = m.From, fmt.Sprintf("node %s, its destination, is known to run nothing (rebuild)", n.Name)
		}
		st := structs.TaskStep{VMID: vm.ID, From: m.From, To: where, State: structs.TaskSucceeded}
		if _, err := e.propose.Propose(ctx, "", fsm.CmdMigrationSettle, fsm.MigrationSettle{VMID: vm.ID, TaskID: m.TaskID,
			Generation: m.Generation, Where: where, Reason: reason}); err != nil {
			st.State, st.Error = structs.TaskFailed, err.Error()
		}
		if m.From == n.ID {
			*steps = append(*steps, st)
		}
	}
	return nil
}

// heldElsewhere says why vm must not be rebuilt: a node-local migration of
// it to another node is known and its outcome is not (announced by the
// destination, or reported unknown by the source), and that node is not
// fenced. "" when it may be rebuilt.
func (e *Endpoints) heldElsewhere(vm structs.VM) (string, error) {
	if !vm.HeldByNodeLocal() {
		return "", nil
	}
	to, err := e.state.Node(vm.NodeLocal.To)
	switch {
	case structs.IsNotFound(err):
		return "", nil // the destination was removed: it runs nothing of ours
	case err != nil:
		return "", err
	case to.Fenced:
		return "", nil
	}
	return fmt.Sprintf("held: a node-local migration to node %s (generation %d) is known and its outcome is not; "+
		"it moves when %s or the source reports it (or rebuild %s with --confirm-fenced)", to.Name, vm.NodeLocal.Generation, to.Name, to.Name), nil
}

// RemoveNode removes the node ref names from the state and from the
// monitor's memory.
func (e *Endpoints) RemoveNode(ctx context.Context, reqID, ref string) error {
	n, err := e.state.ResolveNode(ref)
	if err != nil {
		return err
	}
	if _, err := e.propose.Propose(ctx, e.requestID(reqID), fsm.CmdRemoveNode, fsm.RemoveNode{NodeID: n.ID}); err != nil {
		return err
	}
	e.monitor.Forget(n.ID)
	return nil
}
