package fsm

import (
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// Apply functions of VM commands. Every placement change goes through
// state's MovePlacement; what is checked here first is whether the state
// still allows it (existence, unique names and ids, the generation
// compare-and-set, one migration in flight).

func (a *applier) createVM(p CreateVM) (string, error) {
	v := p.VM
	if owner := a.tx.VMNameOwner(v.Name); owner != "" {
		return "", structs.Conflict("name", "a VM named %q already exists (%s)", v.Name, owner)
	}
	if a.tx.VMExists(v.ID) {
		return "", structs.Conflict("id", "a VM with id %s already exists", v.ID)
	}
	if p.NodeID != "" {
		n, err := a.node(p.NodeID)
		if err != nil {
			return "", err
		}
		if err := a.fits(n, v, p.IfFits); err != nil {
			return "", err
		}
	}
	vm := structs.VM{ID: v.ID, Name: v.Name, Spec: v.Spec, DesiredState: v.DesiredState, CreateIndex: a.tx.Index()}
	if err := a.tx.PutVMName(vm.Name, vm.ID); err != nil {
		return "", err
	}
	var err error
	if p.NodeID != "" {
		err = a.tx.MovePlacement(&vm, p.NodeID, 0)
	} else {
		err = a.tx.PutVM(&vm) // pending: generation 0 until a placement
	}
	if err != nil {
		return "", err
	}
	msg := fmt.Sprintf("vm %s created (%d vCPUs, %d MiB, %s)", vm.Name, vm.Spec.VCPUs, vm.Spec.MemoryMiB, vm.DesiredState)
	if vm.NodeID == "" {
		msg += ", pending: no node fits"
	}
	return vm.ID, a.ev("vm.created", vm.NodeID, vm.ID, "%s", msg)
}

// fits is the capacity compare-and-set (Fit) of placing vm on node n: nil
// when fit is nil (not asserted) or holds, else a conflict on FieldIfFits.
// The usage comes from the derived view, a function of the state.
func (a *applier) fits(n *structs.Node, vm structs.VM, fit *Fit) error {
	if fit == nil {
		return nil
	}
	if n.ManagementState != structs.NodeEnabled || n.MonitorState != structs.MonitorNormal {
		return structs.Conflict(FieldIfFits, "node %s no longer takes VMs (%s, %s): decide again", n.Name, n.ManagementState, n.MonitorState)
	}
	u := a.view.Usage(n.ID)
	if g := vm.Spec.AntiAffinity; g != "" && u.Groups[g] > 0 {
		return structs.Conflict(FieldIfFits, "node %s has a VM of anti-affinity group %q now: decide again", n.Name, g)
	}
	if u.VCPUs+int64(vm.Spec.VCPUs) > fit.VCPUs {
		return structs.Conflict(FieldIfFits, "node %s has %d of %d vCPUs taken now, vm %s needs %d: decide again", n.Name, u.VCPUs, fit.VCPUs, vm.Name, vm.Spec.VCPUs)
	}
	if u.MemoryMiB+int64(vm.Spec.MemoryMiB) > int64(n.MemoryMiB) {
		return structs.Conflict(FieldIfFits, "node %s has %d of %d MiB taken now, vm %s needs %d: decide again", n.Name, u.MemoryMiB, n.MemoryMiB, vm.Name, vm.Spec.MemoryMiB)
	}
	return nil
}

func (a *applier) setDesired(p SetDesired) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if v.DesiredState == p.State {
		return v.ID, nil
	}
	v.DesiredState = p.State
	if err := a.tx.PutVM(v); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.desired", v.NodeID, v.ID, "vm %s: desired state %s", v.Name, p.State)
}

func (a *applier) placeVM(p PlaceVM) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if p.IfGeneration != 0 && v.Generation != p.IfGeneration {
		return "", structs.Conflict("generation", "vm %s: placement changed (generation %d, expected %d)", v.Name, v.Generation, p.IfGeneration)
	}
	if p.IfNodeModifyIndex != 0 {
		if err := a.nodeUnchanged(v.NodeID, p.IfNodeModifyIndex); err != nil {
			return "", err
		}
	}
	if p.IfModifyIndex != 0 && v.ModifyIndex != p.IfModifyIndex {
		return "", structs.Conflict("modify_index", "vm %s changed since the decision was taken (modify index %d, expected %d): decide again",
			v.Name, v.ModifyIndex, p.IfModifyIndex)
	}
	if v.Migration != nil {
		return "", structs.Conflict("vm_id", "vm %s is being live-migrated (task %s)", v.Name, v.Migration.TaskID)
	}
	if p.IfPending && v.NodeID != "" {
		return "", structs.Conflict("node_id", "vm %s is no longer pending: placed on node %s", v.Name, v.NodeID)
	}
	if p.NodeID != "" {
		n, err := a.node(p.NodeID)
		if err != nil {
			return "", err
		}
		if v.NodeID != p.NodeID {
			if err := a.fits(n, *v, p.IfFits); err != nil {
				return "", err
			}
		}
	}
	old := v.NodeID
	if err := a.tx.MovePlacement(v, p.NodeID, 0); err != nil {
		return "", err
	}
	reason := ""
	if p.Reason != "" {
		reason = " (" + p.Reason + ")"
	}
	if err := a.ev("vm.placed", p.NodeID, v.ID, "vm %s placed on node %s (was %s), generation %d%s",
		v.Name, orNone(p.NodeID), orNone(old), v.Generation, reason); err != nil {
		return "", err
	}
	if p.Then != nil {
		e := *p.Then
		e.VMID = v.ID
		if err := a.tx.AppendEvent(e); err != nil {
			return "", err
		}
	}
	return v.ID, nil
}

func (a *applier) deleteVM(p DeleteVM) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if err := a.tx.DeleteVM(v); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.deleted", v.NodeID, v.ID, "vm %s deleted", v.Name)
}

func (a *applier) migrationStart(p MigrationStart) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if v.NodeID == "" {
		return "", structs.Conflict("vm_id", "vm %s is not placed on any node", v.Name)
	}
	if v.Generation != p.IfGeneration {
		return "", structs.Conflict("generation", "vm %s: placement changed (generation %d, expected %d)", v.Name, v.Generation, p.IfGeneration)
	}
	if v.Migration != nil {
		return "", structs.Conflict("vm_id", "vm %s is already migrating (task %s)", v.Name, v.Migration.TaskID)
	}
	if p.To == v.NodeID {
		return "", structs.Invalid("to", "vm %s already runs on node %s", v.Name, p.To)
	}
	if _, err := a.node(p.To); err != nil {
		return "", err
	}
	v.Migration = &structs.Migration{TaskID: p.TaskID, From: v.NodeID, To: p.To, Generation: v.Generation}
	v.TaskID = p.TaskID
	if err := a.tx.PutVM(v); err != nil {
		return "", err
	}
	if err := a.tx.TouchNode(p.To); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.migrating", v.NodeID, v.ID, "vm %s: live migration %s → %s started (task %s)", v.Name, v.NodeID, p.To, p.TaskID)
}

func (a *applier) migrationEnd(p MigrationEnd) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	m := v.Migration
	if p.Unknown {
		return a.migrationUnknown(v, p)
	}
	to := ""
	if m != nil && (p.TaskID == "" || m.TaskID == p.TaskID) {
		to = m.To
		v.Migration = nil
		if err := a.tx.TouchNode(m.To); err != nil {
			return "", err
		}
	} else if m == nil && p.OK {
		// The order was cancelled (timeout) but the agent did migrate: the
		// VM now runs on the destination recorded in the task.
		if to, err = a.taskDestination(p.TaskID, v.ID); err != nil {
			return "", err
		}
	}
	if v.TaskID == p.TaskID {
		v.TaskID = ""
	}
	stepState, stepErr := structs.TaskFailed, p.Error
	switch {
	case p.OK && to != "" && v.Generation == p.Generation && v.NodeID == p.FromNode:
		from := v.NodeID
		// libvirt reported the hand-over done: the VM runs on the
		// destination (its domain still carries the old generation, which
		// the destination adopts).
		v.Observed = &structs.Observation{NodeID: to, State: structs.StateRunning, Reason: "migrated", Generation: p.Generation, At: a.tx.Now()}
		if err := a.tx.MovePlacement(v, to, p.Generation); err != nil {
			return "", err
		}
		stepState, stepErr = structs.TaskSucceeded, ""
		if err := a.ev("vm.migrated", to, v.ID, "vm %s live-migrated %s → %s, generation %d", v.Name, from, to, v.Generation); err != nil {
			return "", err
		}
	case p.OK:
		stepErr = fmt.Sprintf("migration reported done but the placement changed meanwhile (generation %d, reported %d)", v.Generation, p.Generation)
		if err := a.ev("vm.migration_conflict", p.FromNode, v.ID, "vm %s: %s", v.Name, stepErr); err != nil {
			return "", err
		}
		if err := a.tx.PutVM(v); err != nil {
			return "", err
		}
	default:
		if err := a.ev("vm.migration_failed", p.FromNode, v.ID, "vm %s: live migration failed: %s", v.Name, p.Error); err != nil {
			return "", err
		}
		if err := a.tx.PutVM(v); err != nil {
			return "", err
		}
	}
	return v.ID, a.updateTaskStep(p.TaskID, v.ID, stepState, stepErr)
}

// adopt applies a CmdAdopt entry (written before node.heartbeat carried
// adoptions; kept so that old logs replay).
func (a *applier) adopt(p Adopt) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if _, err := a.node(p.NodeID); err != nil {
		return "", err
	}
	if _, err := a.adoptVM(v, p.NodeID, p.Generation); err != nil {
		return "", err
	}
	return v.ID, nil
}

// adoptVM moves v's placement to nodeID, whose agent adopted a domain of
// v at generation gen after a node-local migration: only if gen is still
// v's generation. It reports whether the placement moved; an adoption
// already recorded is not a refusal. A refusal writes nothing.
func (a *applier) adoptVM(v *structs.VM, nodeID string, gen uint64) (bool, error) {
	if v.NodeID == nodeID && v.AdoptGeneration == gen {
		return false, nil // already adopted
	}
	if v.Generation != gen || v.NodeID == "" {
		return false, structs.Conflict("generation", "vm %s: adoption of generation %d refused: the placement is generation %d on node %s",
			v.Name, gen, v.Generation, orNone(v.NodeID))
	}
	from := v.NodeID
	v.Migration = nil
	if err := a.tx.MovePlacement(v, nodeID, gen); err != nil {
		return false, err
	}
	return true, a.ev("vm.adopted", nodeID, v.ID, "vm %s adopted by node %s after a node-local migration from %s, generation %d", v.Name, nodeID, from, v.Generation)
}
