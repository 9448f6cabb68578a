package heartbeat

import (
	"cmp"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// TestBuildDelta: what a heartbeat writes is what differs from the state,
// and nothing when nothing does.
func TestBuildDelta(t *testing.T) {
	yes, no := true, false
	running := func(id string, gen uint64) structs.VMObservation {
		return structs.VMObservation{VMID: id, State: structs.StateRunning, Reason: "booted", Generation: gen}
	}
	tests := []struct {
		name string
		// setup builds the state; it returns the reporting node, the
		// report and the delta expected (nil: nothing to write).
		setup func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat)
	}{
		{"unchanged observation: nothing", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}}, nil
		}},
		{"changed observation", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}},
				&fsm.Heartbeat{NodeID: a.ID, Observations: []structs.VMObservation{running(vm.ID, gen)}}
		}},
		{"placed VM no longer listed: stopped, undefined", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			return a.ID, Report{}, &fsm.Heartbeat{NodeID: a.ID, Observations: []structs.VMObservation{
				{VMID: vm.ID, State: structs.StateStopped, Reason: "undefined", Generation: gen}}}
		}},
		{"libvirt not listed: no VM taken as stopped, no drain acknowledged", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			w.must(fsm.CmdSetManagement, fsm.SetManagement{NodeID: a.ID, State: structs.NodeDrained})
			return a.ID, Report{VMsUnknown: true}, nil
		}},
		{"drained node running nothing, drain applied: drain acknowledged", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			stopped := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "shutdown", Generation: gen}
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}})
			di := w.must(fsm.CmdSetManagement, fsm.SetManagement{NodeID: a.ID, State: structs.NodeDrained}).Index
			return a.ID, Report{VMs: []structs.VMObservation{stopped}, DesiredIndex: di},
				&fsm.Heartbeat{NodeID: a.ID, DrainAcked: &yes, Evidence: &fsm.DrainEvidence{DesiredIndex: di}}
		}},
		{"drained node running nothing, heartbeat from before the drain: no ack (RC8)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			stopped := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "shutdown", Generation: gen}
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}})
			di := w.must(fsm.CmdSetManagement, fsm.SetManagement{NodeID: a.ID, State: structs.NodeDrained}).Index
			return a.ID, Report{VMs: []structs.VMObservation{stopped}, DesiredIndex: di - 1}, nil
		}},
		{"acknowledged drain, then a running VM: ack withdrawn (RC8)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			stopped := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "shutdown", Generation: gen}
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}})
			di := w.must(fsm.CmdSetManagement, fsm.SetManagement{NodeID: a.ID, State: structs.NodeDrained}).Index
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}, DesiredIndex: di})
			if !w.node(a.ID).DrainAcked {
				t.Fatal("setup: the drain was not acknowledged")
			}
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}, DesiredIndex: di},
				&fsm.Heartbeat{NodeID: a.ID, Observations: []structs.VMObservation{running(vm.ID, gen)}, DrainAcked: &no,
					Evidence: &fsm.DrainEvidence{DesiredIndex: di, Running: true}}
		}},
		{"local drain claimed while a VM runs: draining, no evidence (RC1)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}, LocalDrained: true, LocalDrainID: "d-1"},
				&fsm.Heartbeat{NodeID: a.ID, LocalDrainID: ptr("d-1"), LocalDrainState: ptr(structs.LocalDraining),
					Evidence: &fsm.DrainEvidence{Running: true}}
		}},
		{"local drain with every VM stopped: drained", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			stopped := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "shutdown", Generation: gen}
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}})
			return a.ID, Report{VMs: []structs.VMObservation{stopped}, LocalDrained: true, LocalDrainState: structs.LocalDrainDone, LocalDrainID: "d-1"},
				&fsm.Heartbeat{NodeID: a.ID, LocalDrained: &yes, LocalDrainID: ptr("d-1"), LocalDrainState: ptr(structs.LocalDrainDone),
					Evidence: &fsm.DrainEvidence{}}
		}},
		{"local drain done, then a running VM: withdrawn (RC1)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			stopped := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "shutdown", Generation: gen}
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}, LocalDrained: true, LocalDrainState: structs.LocalDrainDone, LocalDrainID: "d-1"})
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}, LocalDrained: true, LocalDrainState: structs.LocalDrainDone, LocalDrainID: "d-1"},
				&fsm.Heartbeat{NodeID: a.ID, Observations: []structs.VMObservation{running(vm.ID, gen)}, LocalDrained: &no,
					LocalDrainState: ptr(structs.LocalDraining), Evidence: &fsm.DrainEvidence{Running: true}}
		}},
		{"local drain done, libvirt not listed: nothing withdrawn", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			stopped := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "shutdown", Generation: gen}
			w.beat(a.ID, Report{VMs: []structs.VMObservation{stopped}, LocalDrained: true, LocalDrainState: structs.LocalDrainDone, LocalDrainID: "d-1"})
			return a.ID, Report{VMsUnknown: true, LocalDrainState: structs.LocalDraining, LocalDrainID: "d-1"}, nil
		}},
		{"stale running copy elsewhere: sent for its event, the node not normal (rule 9)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			return b.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}},
				&fsm.Heartbeat{NodeID: b.ID, Observations: []structs.VMObservation{running(vm.ID, gen)},
					Monitor: &fsm.MonitorTransition{State: structs.MonitorError, Faults: []string{structs.FaultStaleCopy},
						Reason: "heartbeat lists a running copy of a VM placed elsewhere"}}
		}},
		{"stale stopped copy elsewhere: nothing", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			return b.ID, Report{VMs: []structs.VMObservation{{VMID: vm.ID, State: structs.StateStopped, Generation: gen}}}, nil
		}},
		{"incoming copy of a live migration, paused for it: nothing", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			o := structs.VMObservation{VMID: vm.ID, State: structs.StateRunning, Reason: "migration", Generation: gen}
			return b.ID, Report{VMs: []structs.VMObservation{o}}, nil
		}},
		{"incoming copy of a live migration running: evidence it arrived (RC3)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			o := structs.VMObservation{VMID: vm.ID, State: structs.StateRunning, Reason: "migrated", Generation: gen}
			return b.ID, Report{VMs: []structs.VMObservation{o}, DesiredIndex: 7},
				&fsm.Heartbeat{NodeID: b.ID, Migrations: []fsm.MigrationEvidence{{VMObservation: o, DesiredIndex: 7}}}
		}},
		{"held VM running on its source, hold not applied yet: nothing (RC3)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			ui := w.must(fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: "t1", FromNode: a.ID, Generation: gen, Unknown: true, Error: "lost"}).Index
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}, DesiredIndex: ui - 1}, nil
		}},
		{"held VM running on its source, migration still in progress there: nothing (RC3)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			ui := w.must(fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: "t1", FromNode: a.ID, Generation: gen, Unknown: true, Error: "lost"}).Index
			o := running(vm.ID, gen)
			o.Migrating = true
			return a.ID, Report{VMs: []structs.VMObservation{o}, DesiredIndex: ui}, nil
		}},
		{"held VM running on its source after the hold: evidence it stayed (RC3)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			ui := w.must(fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: "t1", FromNode: a.ID, Generation: gen, Unknown: true, Error: "lost"}).Index
			return a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}, DesiredIndex: ui},
				&fsm.Heartbeat{NodeID: a.ID, Migrations: []fsm.MigrationEvidence{{VMObservation: running(vm.ID, gen), DesiredIndex: ui}}}
		}},
		{"held VM absent from its source: half the proof it runs nowhere, not taken as stopped (RC4)", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			ui := w.must(fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: "t1", FromNode: a.ID, Generation: gen, Unknown: true, Error: "lost"}).Index
			gone := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "undefined", Generation: gen}
			return a.ID, Report{DesiredIndex: ui}, &fsm.Heartbeat{NodeID: a.ID, Migrations: []fsm.MigrationEvidence{{VMObservation: gone, DesiredIndex: ui}}}
		}},
		{"held VM absent from its destination before the source's absence: nothing", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{VMs: []structs.VMObservation{running(vm.ID, gen)}})
			w.must(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm.ID, TaskID: "t1", To: b.ID, IfGeneration: gen})
			ui := w.must(fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm.ID, TaskID: "t1", FromNode: a.ID, Generation: gen, Unknown: true, Error: "lost"}).Index
			return b.ID, Report{DesiredIndex: ui + 5}, nil
		}},
		{"adoption claim the source's log records, and its observation for after the adoption", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			w.beat(a.ID, Report{Migrations: []structs.LocalMigration{{VMID: vm.ID, ToNode: b.ID, FromNode: a.ID, Generation: gen, Outcome: structs.LocalMigrationUnknown}}})
			o := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "migrated", Generation: gen}
			return b.ID, Report{VMs: []structs.VMObservation{o}, Adopted: []structs.VMObservation{o}},
				&fsm.Heartbeat{NodeID: b.ID, Adoptions: []fsm.Adoption{{VMID: vm.ID, Generation: gen}}, Observations: []structs.VMObservation{o}}
		}},
		{"adoption claim nothing records: sent to be held, not observed", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			o := running(vm.ID, gen)
			return b.ID, Report{VMs: []structs.VMObservation{o}, Adopted: []structs.VMObservation{o}},
				&fsm.Heartbeat{NodeID: b.ID, Adoptions: []fsm.Adoption{{VMID: vm.ID, Generation: gen}}}
		}},
		{"adoption claim held already: nothing", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			o := running(vm.ID, gen)
			w.beat(b.ID, Report{VMs: []structs.VMObservation{o}, Adopted: []structs.VMObservation{o}})
			return b.ID, Report{VMs: []structs.VMObservation{o}, Adopted: []structs.VMObservation{o}}, nil
		}},
		{"adoption already in the placement: not sent again", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			o := running(vm.ID, gen)
			w.beat(b.ID, Report{VMs: []structs.VMObservation{o}, Adopted: []structs.VMObservation{o}})
			return b.ID, Report{VMs: []structs.VMObservation{o}, Adopted: []structs.VMObservation{o}}, nil
		}},
		{"faults, sorted, with the reason", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			return b.ID, Report{Faults: []string{"storage", "kernel"}}, &fsm.Heartbeat{NodeID: b.ID,
				Monitor: &fsm.MonitorTransition{State: structs.MonitorError, Faults: []string{"kernel", "storage"}, Reason: "agent reports faults"}}
		}},
		{"local migration reports are always carried", func(w *world, a, b structs.Node, vm structs.VM, gen uint64) (string, Report, *fsm.Heartbeat) {
			m := []structs.LocalMigration{{VMID: vm.ID, ToAddr: "10.0.0.2:4660", Generation: gen}}
			return a.ID, Report{Migrations: m}, &fsm.Heartbeat{NodeID: a.ID, LocalMigrations: m}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			a, b := w.register("a"), w.register("b")
			vm := structs.VM{ID: uuid.NewString(), Name: "web", DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
			gen := w.must(fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: a.ID}).Index
			nodeID, r, want := tt.setup(w, a, b, vm, gen)
			got, err := buildDelta(w.f, w.node(nodeID), r, time.Unix(0, 0))
			if err != nil {
				t.Fatal(err)
			}
			if got != nil {
				// Every delta carries the copies it lists for the FSM to
				// judge (TestBuildDeltaReturnGate checks them).
				if got.Copies == nil || got.Copies.DesiredIndex != r.DesiredIndex {
					t.Fatalf("delta without its copy evidence: %+v", got)
				}
				got.Copies = nil
				if !got.Authorized {
					t.Fatalf("delta not marked Authorized: %+v", got)
				}
				got.Authorized = false
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("delta\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestReturnGate: an unreachable node leaves unreachable only through a
// heartbeat naming a desired index at least the node's, with libvirt
// listed and no running copy of a VM placed elsewhere or at an older
// generation; a node that runs such a copy is never normal, and the copy
// is a uniqueness conflict until a heartbeat shows it gone (uniqueness
// rule 9). Each step is one heartbeat through the monitor and the FSM.
func TestReturnGate(t *testing.T) {
	type beat struct {
		name string
		// report builds the heartbeat of node b; cur is the node's
		// desired index, gen the VM's generation (placed on a), old the
		// generation of b's copy (placed on b before it moved to a).
		report        func(cur, gen, old uint64) Report
		wantState     string
		wantRefused   bool // return_refused set
		wantConflicts int
		wantDestroyed bool          // the conflict is a destroyed copy
		after         time.Duration // time before this heartbeat (default: one interval)
	}
	running := func(id string, g uint64) structs.VMObservation {
		return structs.VMObservation{VMID: id, State: structs.StateRunning, Reason: "booted", Generation: g}
	}
	tests := []struct {
		name        string
		unreachable bool // b is unreachable before the first heartbeat
		beats       []beat
	}{
		{"clean return", true, []beat{
			{"current index, nothing stale", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur} }, structs.MonitorNormal, false, 0, false, 0},
		}},
		{"desired index behind: stays unreachable until the agent synced", true, []beat{
			{"old index", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur - 1} }, structs.MonitorUnreachable, true, 0, false, 0},
			{"old index again: nothing new", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur - 1} }, structs.MonitorUnreachable, true, 0, false, 0},
			{"synced", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur} }, structs.MonitorNormal, false, 0, false, 0},
		}},
		{"libvirt not listed: stays unreachable", true, []beat{
			{"unlisted", func(cur, gen, old uint64) Report {
				return Report{DesiredIndex: cur, VMsUnknown: true, Faults: []string{"libvirtd unreachable"}}
			}, structs.MonitorUnreachable, true, 0, false, 0},
		}},
		{"stale copy runs: stays unreachable, conflict; destroyed: conflict reported, node returns", true, []beat{
			{"stale copy running", func(cur, gen, old uint64) Report {
				return Report{DesiredIndex: cur, VMs: []structs.VMObservation{running(vmID, old)}}
			}, structs.MonitorUnreachable, true, 1, false, 0},
			{"destroyed since", func(cur, gen, old uint64) Report {
				return Report{DesiredIndex: cur, StaleDestroyed: []structs.VMObservation{running(vmID, old)}}
			}, structs.MonitorNormal, false, 1, true, 0},
			{"gone: the conflict stays for the hold", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur} }, structs.MonitorNormal, false, 1, true, 0},
			{"hold over: conflict resolved", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur} }, structs.MonitorNormal, false, 0, false, structs.ConflictHold},
		}},
		{"normal node that runs a stale copy: error until it is gone", false, []beat{
			{"stale copy running", func(cur, gen, old uint64) Report {
				return Report{DesiredIndex: cur, VMs: []structs.VMObservation{running(vmID, old)}}
			}, structs.MonitorError, false, 1, false, 0},
			{"gone: normal, the conflict ended but held", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur} }, structs.MonitorNormal, false, 1, false, 0},
			{"hold over: conflict resolved", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur} }, structs.MonitorNormal, false, 0, false, structs.ConflictHold},
		}},
		{"current copy and an older index on a normal node: normal", false, []beat{
			{"old index is no reason on a normal node", func(cur, gen, old uint64) Report { return Report{DesiredIndex: cur - 1} }, structs.MonitorNormal, false, 0, false, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			a, b := w.register("a"), w.register("b")
			vm := structs.VM{ID: vmID, Name: "web", DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
			old := w.must(fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: b.ID}).Index
			w.beat(b.ID, Report{DesiredIndex: w.f.NodeIndex(b.ID), VMs: []structs.VMObservation{running(vmID, old)}})
			if tt.unreachable {
				w.must(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: b.ID, State: structs.MonitorUnreachable, Reason: "test"})
			}
			// The VM is rebuilt on a while b is away: b's copy is stale.
			w.must(fsm.CmdSetManagement, fsm.SetManagement{NodeID: b.ID, State: structs.NodeDrained})
			gen := w.must(fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vmID, NodeID: a.ID, IfGeneration: old, Reason: "rebuild"}).Index
			for _, bt := range tt.beats {
				w.clock.Advance(cmp.Or(bt.after, testInterval))
				w.beat(b.ID, bt.report(w.f.NodeIndex(b.ID), gen, old))
				n := w.node(b.ID)
				if n.MonitorState != bt.wantState || (n.ReturnRefused != "") != bt.wantRefused || len(n.StaleCopies) != bt.wantConflicts {
					t.Fatalf("%s: state %s refused %q conflicts %+v; want %s, refused %v, %d conflicts",
						bt.name, n.MonitorState, n.ReturnRefused, n.StaleCopies, bt.wantState, bt.wantRefused, bt.wantConflicts)
				}
				if bt.wantConflicts > 0 {
					c := n.StaleCopies[0]
					if c.VMID != vmID || c.Generation != old || c.PlacedOn != a.ID || c.PlacedGeneration != gen || c.Destroyed != bt.wantDestroyed {
						t.Fatalf("%s: conflict %+v, want vm %s generation %d placed on a generation %d destroyed %v", bt.name, c, vmID, old, gen, bt.wantDestroyed)
					}
				}
				if n.MonitorState == structs.MonitorNormal && slices.Contains(n.Faults, structs.FaultStaleCopy) {
					t.Fatalf("%s: normal with fault %q", bt.name, structs.FaultStaleCopy)
				}
			}
		})
	}
}

const vmID = "5f0c1e9a-7d3b-4c2a-9e81-2b6f4d8a1c07"
