package fsm

import (
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// heartbeat applies the delta of one heartbeat in one transaction, in the
// order the separate commands it replaces were proposed: adoptions, then
// observations (judged after the adoptions moved their VMs here), local
// migrations, node flags, and the monitor transition, judged against the
// copies the heartbeat lists when it carries them (judgeCopies: the
// servers gate the return).
func (a *applier) heartbeat(p Heartbeat) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	// The node's desired-state index as the agent could have seen it:
	// before this command's adoptions move VMs here.
	nodeIndex := a.tx.NodeIndex(n.ID)
	out := &HeartbeatOutcome{}
	for _, c := range p.Adoptions {
		if p.Authorized {
			held, err := a.unprovenAdoption(n, c)
			if err != nil {
				return "", err
			}
			if held {
				out.Held = append(out.Held, c.VMID)
				continue
			}
		}
		adopted, err := a.adoptClaim(n, c)
		switch {
		case err == nil && adopted:
			out.Adopted = append(out.Adopted, c.VMID)
		case err == nil:
		case isRefusal(err):
			out.Rejected = append(out.Rejected, c.VMID)
			if err := a.recordRefusedAdoption(n, c, err); err != nil {
				return "", err
			}
		default:
			return "", err
		}
	}
	if err := a.migrationEvidence(n, p.Migrations); err != nil {
		return "", err
	}
	if err := a.observe(n.ID, p.Observations); err != nil {
		return "", err
	}
	for _, m := range p.LocalMigrations {
		if err := a.localMigration(n, m); err != nil {
			return "", err
		}
	}
	for _, m := range p.LocalMoves {
		if err := a.localMove(n, m, p.Authorized); err != nil {
			return "", err
		}
	}
	for _, c := range p.Announced {
		if err := a.announced(n, c, p.Authorized); err != nil {
			return "", err
		}
	}
	for _, c := range p.ExpiredAdoptions {
		if err := a.adoptionExpired(n, c); err != nil {
			return "", err
		}
	}
	var events []structs.Event
	flags := SetNodeFlags{NodeID: n.ID, LocalDrained: p.LocalDrained, DrainAcked: p.DrainAcked, LocalDrainID: p.LocalDrainID}
	localState := p.LocalDrainState
	if p.Evidence != nil {
		flags, localState = judgeDrainEvidence(n, *p.Evidence, flags, localState)
	}
	changes := flags.applyTo(n)
	if localState != nil && n.LocalDrainState != *localState {
		n.LocalDrainState = *localState
		changes = append(changes, fmt.Sprintf("local_drain_state=%q", n.LocalDrainState))
	}
	if len(changes) > 0 {
		events = append(events, structs.Event{Kind: "node.flags", NodeID: n.ID, Message: fmt.Sprintf("node %s: %v", n.Name, changes)})
	}
	dirty := false
	switch {
	case p.Copies != nil:
		ev := *p.Copies
		if p.Authorized {
			if ev, err = WithoutHeld(ev, n.ID, a.tx.VM); err != nil {
				return "", err
			}
		}
		evs, changed, err := a.judgeCopies(n, nodeIndex, ev, p.Monitor)
		if err != nil {
			return "", err
		}
		events, dirty = append(events, evs...), changed
	case p.Monitor != nil: // an entry written before the return gate
		if e, changed := monitorTransition(n, *p.Monitor, a.tx.Now()); changed {
			events = append(events, e)
		}
	}
	if len(events) > 0 || dirty {
		if err := a.tx.PutNode(n); err != nil {
			return "", err
		}
	}
	for _, e := range events {
		if err := a.tx.AppendEvent(e); err != nil {
			return "", err
		}
	}
	a.res.Heartbeat = out
	return n.ID, nil
}

// judgeDrainEvidence re-checks the drain flags a heartbeat delta asks for
// against its evidence and the node as it is now (uniqueness rule 6): a
// drain ack counts only when management is drained, the agent had applied
// a desired state at least as new as the drain and listed every domain
// stopped; a local drain counts only when every domain is listed stopped.
// A heartbeat that lists a running domain withdraws both.
func judgeDrainEvidence(n *structs.Node, ev DrainEvidence, f SetNodeFlags, localState *string) (SetNodeFlags, *string) {
	no := false
	stopped := !ev.Running && !ev.Unknown
	if f.DrainAcked != nil && *f.DrainAcked &&
		(n.ManagementState != structs.NodeDrained || !stopped || ev.DesiredIndex < n.DrainIndex) {
		f.DrainAcked = nil
	}
	if f.LocalDrained != nil && *f.LocalDrained && !stopped {
		f.LocalDrained = nil
	}
	if localState != nil && *localState == structs.LocalDrainDone && !stopped {
		draining := structs.LocalDraining
		localState = &draining
	}
	if ev.Running {
		f.DrainAcked, f.LocalDrained = &no, &no
		if n.LocalDrainState == structs.LocalDrainDone && localState == nil {
			draining := structs.LocalDraining
			localState = &draining
		}
	}
	return f, localState
}

// adoptClaim applies one adoption claim of node n; a claim the placement
// already reflects ((*VM).AdoptedBy) changes nothing. A refusal (VM gone,
// generation moved on) is returned as an error and has written nothing.
func (a *applier) adoptClaim(n *structs.Node, c Adoption) (bool, error) {
	v, err := a.vm(c.VMID)
	if err != nil {
		return false, err
	}
	if v.AdoptedBy(n.ID, c.Generation) {
		return false, nil
	}
	return a.adoptVM(v, n.ID, c.Generation)
}

// unprovenAdoption holds, instead of adopting, a claim of node n that
// AdoptionProven does not back (Heartbeat.Authorized); it reports whether
// it did. A claim already reflected, or one refused anyway (VM gone,
// generation moved on), is left to adoptClaim.
func (a *applier) unprovenAdoption(n *structs.Node, c Adoption) (bool, error) {
	v, err := a.tx.VM(c.VMID)
	if err != nil || v == nil {
		return false, err
	}
	if v.AdoptedBy(n.ID, c.Generation) || v.Generation != c.Generation || v.NodeID == "" ||
		AdoptionProven(v, n.ID, c.Generation, c.Proof, a.source) {
		return false, nil
	}
	return true, a.holdForAdoption(n, v, c.Generation)
}

// recordRefusedAdoption records a refused adoption as a failed adopt task
// (which raises the TaskFailed alarm), once per VM, generation and node.
func (a *applier) recordRefusedAdoption(n *structs.Node, c Adoption, refusal error) error {
	id := AdoptTaskID(c.VMID, c.Generation, n.ID)
	existing, err := a.tx.Task(id)
	if err != nil {
		return err
	}
	if existing != nil && existing.State == structs.TaskFailed {
		return nil
	}
	_, err = a.putTask(PutTask{Task: structs.Task{ID: id, Kind: structs.TaskAdopt, NodeID: n.ID, VMID: c.VMID, State: structs.TaskFailed,
		Error: fmt.Sprintf("node %s adopted vm %s (generation %d) by node-local migration, refused: %v; the adopted copy is destroyed",
			n.Name, c.VMID, c.Generation, refusal)}})
	return err
}

// localMigration records a node-local migration the source node's agent
// reports. The placement does not move here: the destination's adoption
// moves it, if the generation still matches.
func (a *applier) localMigration(n *structs.Node, m structs.LocalMigration) error {
	name := m.VMID
	if v, err := a.tx.VM(m.VMID); err != nil {
		return err
	} else if v != nil {
		name = v.Name
	}
	return a.ev("vm.local_migration", n.ID, m.VMID, "vm %s migrated node-locally from node %s to %s (generation %d)",
		name, n.Name, orNone(m.ToAddr), m.Generation)
}

// localMove applies one entry of node n's migration log that carries an
// outcome (uniqueness rule 7: either end's report moves the placement).
// Every entry is final once applied, refused or not: the agent deletes it
// on the acknowledgement.
func (a *applier) localMove(n *structs.Node, m structs.LocalMigration, authorized bool) error {
	v, err := a.tx.VM(m.VMID)
	if err != nil {
		return err
	}
	if v == nil {
		return a.ev("vm.local_migration", n.ID, m.VMID, "vm %s: node-local migration from node %s reported, but the VM is gone", m.VMID, n.Name)
	}
	to, err := a.tx.Node(m.ToNode)
	if err != nil {
		return err
	}
	if to == nil {
		return a.ev("vm.local_migration", n.ID, v.ID, "vm %s: node-local migration from node %s to unknown node %s (generation %d) refused",
			v.Name, n.Name, orNone(m.ToNode), m.Generation)
	}
	// The copy that left n: placed on n at that generation, or placed on
	// n as the adoption of that generation (it arrived by a node-local
	// migration, whose adoption moved the placement here, and left again
	// by the one reported now: random seed 4147).
	here := v.NodeID == n.ID && (v.Generation == m.Generation || (v.AdoptGeneration != 0 && v.AdoptGeneration == m.Generation))
	switch m.Outcome {
	case structs.LocalMigrationFailed:
		// Authorized: only the node the VM is placed on (its source)
		// releases a hold; another node's report is an event only.
		if nl := v.NodeLocal; (nl != nil && nl.To == to.ID && nl.Generation == m.Generation && (!authorized || v.NodeID == n.ID)) || (nl == nil && here) {
			// Kept (not cleared) so that a late announcement of this very
			// migration is dropped, not held again.
			v.NodeLocal = &structs.NodeLocalMigration{To: to.ID, Generation: m.Generation, Outcome: structs.LocalMigrationFailed}
			if err := a.tx.PutObservedVM(v); err != nil {
				return err
			}
		}
		return a.ev("vm.local_migration_failed", n.ID, v.ID, "vm %s: node-local migration from node %s to %s (generation %d) failed; it stays on %s",
			v.Name, n.Name, to.Name, m.Generation, n.Name)
	case structs.LocalMigrationUnknown:
		if !here {
			break
		}
		v.NodeLocal = &structs.NodeLocalMigration{To: to.ID, Generation: m.Generation, Outcome: structs.LocalMigrationUnknown}
		if err := a.tx.PutObservedVM(v); err != nil {
			return err
		}
		return a.ev("vm.local_migration_unknown", n.ID, v.ID, "vm %s: node-local migration from node %s to %s (generation %d) has an unknown outcome: held until a node reports the domain",
			v.Name, n.Name, to.Name, m.Generation)
	default: // succeeded
		if v.AdoptedBy(to.ID, m.Generation) {
			return a.ev("vm.local_migration", n.ID, v.ID, "vm %s migrated node-locally from node %s to %s (generation %d), already adopted there",
				v.Name, n.Name, to.Name, m.Generation)
		}
		if !here {
			break
		}
		v.Migration = nil
		if err := a.tx.MovePlacement(v, to.ID, m.Generation); err != nil {
			return err
		}
		return a.ev("vm.local_migrated", to.ID, v.ID, "vm %s placed on node %s after a node-local migration from %s reported by the source, generation %d",
			v.Name, to.Name, n.Name, v.Generation)
	}
	return a.ev("vm.local_migration", n.ID, v.ID, "vm %s: node-local migration from node %s to %s (generation %d, %s) refused: the placement is generation %d on node %s",
		v.Name, n.Name, to.Name, m.Generation, m.Outcome, v.Generation, orNone(v.NodeID))
}

// announced applies one node-local migration announced to node n whose
// domain has not arrived: the VM is held (no rebuild starts it elsewhere)
// while it is still placed on another node at the announced generation.
// An announcement the state already reflects, or one that is over (VM
// gone, placement moved on, source reported failure), changes nothing;
// the heartbeat's answer tells the agent to drop the latter.
func (a *applier) announced(n *structs.Node, c Adoption, authorized bool) error {
	v, err := a.tx.VM(c.VMID)
	if err != nil || v == nil {
		return err
	}
	if v.NodeID == "" || v.NodeID == n.ID || v.Generation != c.Generation {
		return nil
	}
	if nl := v.NodeLocal; nl != nil && nl.To == n.ID && nl.Generation == c.Generation {
		return nil
	}
	if nl := v.NodeLocal; authorized && nl != nil && nl.Outcome != "" && nl.Generation == c.Generation {
		return nil // the source's own report stands
	}
	v.NodeLocal = &structs.NodeLocalMigration{To: n.ID, Generation: c.Generation}
	if err := a.tx.PutObservedVM(v); err != nil {
		return err
	}
	return a.ev("vm.local_migration_announced", n.ID, v.ID, "vm %s: node %s expects it by node-local migration from %s (generation %d): held until the outcome is known",
		v.Name, n.Name, v.NodeID, c.Generation)
}

// adoptionExpired releases the hold of an announcement node n dropped
// after its bound without the domain arriving. A hold released this way
// is recorded as a failed adopt task (the TaskFailed alarm): the operator
// must find out where the VM runs before rebuilding its node.
func (a *applier) adoptionExpired(n *structs.Node, c Adoption) error {
	v, err := a.tx.VM(c.VMID)
	if err != nil || v == nil {
		return err
	}
	nl := v.NodeLocal
	if nl == nil || nl.To != n.ID || nl.Generation != c.Generation {
		return nil
	}
	held := v.HeldByNodeLocal()
	v.NodeLocal = nil
	if err := a.tx.PutObservedVM(v); err != nil {
		return err
	}
	if !held {
		return nil
	}
	msg := fmt.Sprintf("node %s expected vm %s (generation %d) by node-local migration from %s, and it never arrived within the bound: the hold is released",
		n.Name, v.Name, c.Generation, orNone(v.NodeID))
	if err := a.ev("vm.local_migration_expired", n.ID, v.ID, "%s", msg); err != nil {
		return err
	}
	_, err = a.putTask(PutTask{Task: structs.Task{ID: AdoptTaskID(c.VMID, c.Generation, n.ID), Kind: structs.TaskAdopt, NodeID: n.ID, VMID: c.VMID,
		State: structs.TaskFailed, Error: msg}})
	return err
}

// observeCmd applies a CmdObserve entry (written before node.heartbeat
// carried observations; kept so that old logs replay).
func (a *applier) observeCmd(p Observe) (string, error) {
	if _, err := a.node(p.NodeID); err != nil {
		return "", err
	}
	return p.NodeID, a.observe(p.NodeID, p.Observations)
}

// observe records what a node's agent reports. An observation only counts
// when it describes the VM's current placement ((*VM).ObservationCurrent);
// a running copy anywhere else is a stale copy the agent itself destroys,
// recorded as an event, never as state. The incoming copy of a live
// migration in flight is expected and ignored.
func (a *applier) observe(nodeID string, obs []structs.VMObservation) error {
	for _, o := range obs {
		v, err := a.tx.VM(o.VMID)
		if err != nil {
			return err
		}
		if v == nil || v.IncomingHere(nodeID) {
			continue // deleted meanwhile, or migrating here
		}
		if !v.ObservationCurrent(nodeID, o.Generation) {
			if o.State == structs.StateRunning {
				if err := a.ev("vm.stale_copy", nodeID, v.ID, "vm %s reported running on node %s with generation %d, placed on %s generation %d",
					v.Name, nodeID, o.Generation, orNone(v.NodeID), v.Generation); err != nil {
					return err
				}
			}
			continue
		}
		prev := v.Observed
		if prev != nil && prev.NodeID == nodeID && prev.State == o.State && prev.Reason == o.Reason && prev.Generation == o.Generation {
			continue
		}
		v.Observed = &structs.Observation{NodeID: nodeID, State: o.State, Reason: o.Reason, Generation: o.Generation, At: a.tx.Now()}
		if err := a.tx.PutObservedVM(v); err != nil {
			return err
		}
		if prev == nil || prev.State != o.State {
			if err := a.ev("vm."+o.State, nodeID, v.ID, "vm %s is %s on node %s (%s)", v.Name, o.State, nodeID, o.Reason); err != nil {
				return err
			}
		}
	}
	return nil
}
