package fsm

import (
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// Live migrations whose outcome is unknown (uniqueness rule 8). Such a VM
// keeps its migration record, with outcome unknown: the source's desired
// state holds it (no start, no order), the destination's lists it incoming
// (kept, never destroyed), and nothing places it, until evidence settles
// it: the destination lists it running at the migration's generation
// (the hand-over happened), the source lists it running with no migration
// in progress after it applied the hold (it did not), a late report of
// the source agent, or a fence of either end (MigrationSettle).

// migrationUnknown records that nobody knows whether p's migration handed
// the VM over. It applies only to the migration in flight that p names,
// from the placement p names; anything else is already settled and changes
// nothing.
func (a *applier) migrationUnknown(v *structs.VM, p MigrationEnd) (string, error) {
	m := v.Migration
	if m == nil || m.TaskID != p.TaskID || m.Generation != p.Generation || v.Generation != p.Generation || v.NodeID != p.FromNode {
		return v.ID, nil
	}
	if m.Outcome == structs.MigrationOutcomeUnknown {
		return v.ID, nil
	}
	m.Outcome, m.UnknownIndex, m.UnknownSince, m.UnknownReason = structs.MigrationOutcomeUnknown, a.tx.Index(), a.tx.Now(), p.Error
	if err := a.tx.PutVM(v); err != nil { // wakes the source: its order becomes a hold
		return "", err
	}
	return v.ID, a.ev("vm.migration_unknown", m.From, v.ID,
		"vm %s: outcome of the live migration %s → %s unknown (%s): held, started nowhere until a host proves where it runs",
		v.Name, m.From, m.To, p.Error)
}

// migrationEvidence settles VMs' migrations on what node n's heartbeat
// lists ((*structs.VM).MigrationSettledBy judges each item again).
func (a *applier) migrationEvidence(n *structs.Node, evs []MigrationEvidence) error {
	for _, e := range evs {
		v, err := a.tx.VM(e.VMID)
		if err != nil {
			return err
		}
		if v == nil {
			continue
		}
		switch v.MigrationSettledBy(n.ID, e.VMObservation, e.DesiredIndex) {
		case structs.MigrationArrived:
			obs := &structs.Observation{NodeID: n.ID, State: e.State, Reason: e.Reason, Generation: e.Generation, At: a.tx.Now()}
			if err := a.settleAt(v, v.Migration.To, obs, false, fmt.Sprintf("node %s reports it running", n.Name)); err != nil {
				return err
			}
		case structs.MigrationStayed:
			if err := a.settleAt(v, v.Migration.From, nil, false, fmt.Sprintf("node %s, its source, reports it running there", n.Name)); err != nil {
				return err
			}
		case structs.MigrationSourceAbsent:
			// Half the proof that it runs nowhere; the destination's next
			// desired state is at least this index, so its listing after it
			// is later than the source's.
			v.Migration.SourceAbsentIndex = a.tx.Index()
			if err := a.tx.TouchNode(v.Migration.To); err != nil {
				return err
			}
			if err := a.tx.PutVM(v); err != nil {
				return err
			}
			to := v.Migration.To
			if dn, err := a.tx.Node(to); err != nil {
				return err
			} else if dn != nil {
				to = dn.Name
			}
			if err := a.ev("vm.migration_source_absent", n.ID, v.ID, "vm %s (held): its source %s no longer runs it; if %s does not either, it runs nowhere",
				v.Name, n.Name, to); err != nil {
				return err
			}
		case structs.MigrationNowhere:
			if err := a.settleAt(v, v.Migration.From, nil, true, fmt.Sprintf("neither its source nor node %s, its destination, runs it", n.Name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// migrationSettle applies a CmdMigrationSettle entry.
func (a *applier) migrationSettle(p MigrationSettle) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	m := v.Migration
	if m == nil || m.TaskID != p.TaskID || m.Generation != p.Generation || v.Generation != p.Generation {
		return "", structs.Conflict("vm_id", "vm %s: no live migration of task %s at generation %d to settle", v.Name, p.TaskID, p.Generation)
	}
	if p.Where != m.To && p.Where != m.From {
		return "", structs.Invalid("where", "vm %s migrates %s → %s, not from or to %s", v.Name, m.From, m.To, p.Where)
	}
	if _, err := a.node(p.Where); err != nil {
		return "", err
	}
	return v.ID, a.settleAt(v, p.Where, nil, true, p.Reason)
}

// settleAt ends v's migration with the VM known to run on node where, or
// nowhere else: on the destination the placement moves there adopting the
// migrating generation (the step succeeded); on the source it stays (the
// step failed: the hand-over did not happen). obs, when set, is the
// observation that proved it; fenced says the other end was fenced, or
// neither end runs it, instead (a new generation then lets the source
// start it again).
func (a *applier) settleAt(v *structs.VM, where string, obs *structs.Observation, fenced bool, why string) error {
	m := v.Migration
	v.Migration = nil
	if v.TaskID == m.TaskID {
		v.TaskID = ""
	}
	if where == m.To {
		if obs != nil {
			v.Observed = obs
		}
		if err := a.tx.MovePlacement(v, m.To, m.Generation); err != nil {
			return err
		}
		if err := a.ev("vm.migrated", m.To, v.ID, "vm %s live-migrated %s → %s, generation %d (settled: %s)", v.Name, m.From, m.To, v.Generation, why); err != nil {
			return err
		}
		return a.updateTaskStep(m.TaskID, v.ID, structs.TaskSucceeded, "")
	}
	if err := a.tx.TouchNode(m.To); err != nil { // the destination's incoming copy is no longer expected
		return err
	}
	if obs == nil && fenced {
		// Settled on a fence of the destination, not on the source's
		// word: the source may have retired the migrating generation (its
		// domain left, or it could not tell). A new generation adopting
		// the old one lets it keep a copy that still runs there, or start
		// one when none does; nothing else can run it.
		if err := a.tx.MovePlacement(v, m.From, m.Generation); err != nil {
			return err
		}
	} else if err := a.tx.PutVM(v); err != nil {
		return err
	}
	msg := fmt.Sprintf("live migration %s → %s did not move the VM (settled: %s)", m.From, m.To, why)
	if err := a.ev("vm.migration_failed", m.From, v.ID, "vm %s: %s", v.Name, msg); err != nil {
		return err
	}
	return a.updateTaskStep(m.TaskID, v.ID, structs.TaskFailed, msg)
}
