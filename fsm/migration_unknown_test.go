package fsm

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// TestMigrationOutcomeUnknown: a migration whose outcome is unknown holds
// the VM (uniqueness rule 8) until evidence settles it, and only evidence
// does: the destination running it, the source running it after it
// applied the hold with no migration in progress, a late report, a fence.
func TestMigrationOutcomeUnknown(t *testing.T) {
	type ids struct{ src, dst string }
	running := func(id string, gen uint64, reason string) structs.VMObservation {
		return structs.VMObservation{VMID: id, State: structs.StateRunning, Reason: reason, Generation: gen}
	}
	tests := []struct {
		name string
		// then proposes what happens after the outcome became unknown (at
		// index ui) and returns the node the VM must end up on ("" = still
		// held on the source) and the step state.
		then     func(h *harness, n ids, v structs.VM, gen, ui uint64) error
		wantNode string // "src", "src-new" (a new generation adopting the old), "dst", or "" (held)
		wantStep string
	}{
		{"nothing happens: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error { return nil }, "", structs.TaskRunning},
		{"destination lists it running (migrated): placed there", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: running(v.ID, gen, "migrated")}}}).Err
		}, "dst", structs.TaskSucceeded},
		{"destination lists it paused for the migration: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: running(v.ID, gen, "migration")}}}).Err
		}, "", structs.TaskRunning},
		{"destination lists an older generation: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: running(v.ID, gen-1, "migrated")}}}).Err
		}, "", structs.TaskRunning},
		{"source lists it running before it applied the hold: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.src, Migrations: []MigrationEvidence{{VMObservation: running(v.ID, gen, "booted"), DesiredIndex: ui - 1}}}).Err
		}, "", structs.TaskRunning},
		{"source lists it running, migration in progress: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			o := running(v.ID, gen, "booted")
			o.Migrating = true
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.src, Migrations: []MigrationEvidence{{VMObservation: o, DesiredIndex: ui}}}).Err
		}, "", structs.TaskRunning},
		{"source lists it running after the hold: stays there", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.src, Migrations: []MigrationEvidence{{VMObservation: running(v.ID, gen, "booted"), DesiredIndex: ui}}}).Err
		}, "src", structs.TaskFailed},
		{"late success report of the source: placed on the destination", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: n.src, Generation: gen, OK: true}).Err
		}, "dst", structs.TaskSucceeded},
		{"late failure report of the source: stays there", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: n.src, Generation: gen, Error: "aborted"}).Err
		}, "src", structs.TaskFailed},
		{"a second unknown changes nothing: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: n.src, Generation: gen, Unknown: true, Error: "again"}).Err
		}, "", structs.TaskRunning},
		{"destination does not list it, source not heard from: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			gone := structs.VMObservation{VMID: v.ID, State: structs.StateStopped, Reason: "undefined", Generation: gen}
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: ui + 10}}}).Err
		}, "", structs.TaskRunning},
		{"source absent, then the destination's listing from before it: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			gone := structs.VMObservation{VMID: v.ID, State: structs.StateStopped, Reason: "undefined", Generation: gen}
			r := h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.src, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: ui}}})
			if r.Err != nil {
				return r.Err
			}
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: r.Index - 1}}}).Err
		}, "", structs.TaskRunning},
		{"source absent, then the destination absent after it: runs nowhere, started on the source again", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			gone := structs.VMObservation{VMID: v.ID, State: structs.StateStopped, Reason: "undefined", Generation: gen}
			r := h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.src, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: ui}}})
			if r.Err != nil {
				return r.Err
			}
			if got := h.f.NodeIndex(n.dst); got != r.Index {
				return fmt.Errorf("destination's desired index %d after the source's absence at %d: it must be woken", got, r.Index)
			}
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: r.Index}}}).Err
		}, "src-new", structs.TaskFailed},
		{"source absent while a migration of it may be in progress there: held", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			gone := structs.VMObservation{VMID: v.ID, State: structs.StateStopped, Reason: "undefined", Generation: gen, Migrating: true}
			r := h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.src, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: ui}}})
			if r.Err != nil {
				return r.Err
			}
			gone.Migrating = false
			return h.apply("", CmdHeartbeat, Heartbeat{NodeID: n.dst, Migrations: []MigrationEvidence{{VMObservation: gone, DesiredIndex: r.Index}}}).Err
		}, "", structs.TaskRunning},
		{"source fenced: settled on the destination", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdMigrationSettle, MigrationSettle{VMID: v.ID, TaskID: "t1", Generation: gen, Where: n.dst, Reason: "source fenced"}).Err
		}, "dst", structs.TaskSucceeded},
		{"destination fenced: settled on the source", func(h *harness, n ids, v structs.VM, gen, ui uint64) error {
			return h.apply("", CmdMigrationSettle, MigrationSettle{VMID: v.ID, TaskID: "t1", Generation: gen, Where: n.src, Reason: "destination fenced"}).Err
		}, "src-new", structs.TaskFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			src, dst := node("src"), node("dst")
			h.must("", CmdRegisterNode, RegisterNode{Node: src})
			h.must("", CmdRegisterNode, RegisterNode{Node: dst})
			v := vm("web")
			gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: src.ID}).Index
			h.must("", CmdPutTask, PutTask{Task: structs.Task{ID: "t1", Kind: structs.TaskMigrate, State: structs.TaskRunning,
				Steps: []structs.TaskStep{{VMID: v.ID, From: src.ID, To: dst.ID, State: structs.TaskRunning}}}})
			h.must("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: "t1", To: dst.ID, IfGeneration: gen})
			ui := h.must("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: src.ID, Generation: gen, Unknown: true,
				Error: "libvirt disconnected"}).Index
			held, _ := h.f.VM(v.ID)
			if !held.Held() || held.State != structs.StateHeld || held.NodeID != src.ID || held.Migration.UnknownIndex != ui ||
				held.Migration.UnknownReason != "libvirt disconnected" || h.f.NodeIndex(src.ID) != ui {
				t.Fatalf("after the unknown outcome: %+v (migration %+v); the source must be woken", held, held.Migration)
			}
			if err := tt.then(h, ids{src.ID, dst.ID}, v, gen, ui); err != nil {
				t.Fatal(err)
			}
			got, _ := h.f.VM(v.ID)
			task, _ := h.f.Task("t1")
			switch tt.wantNode {
			case "":
				if !got.Held() || got.NodeID != src.ID || got.Generation != gen {
					t.Fatalf("want held on the source at generation %d: node %s gen %d migration %+v", gen, got.NodeID, got.Generation, got.Migration)
				}
			case "src":
				if got.Migration != nil || got.NodeID != src.ID || got.Generation != gen || got.State == structs.StateHeld {
					t.Fatalf("want settled on the source: node %s gen %d state %s migration %+v", got.NodeID, got.Generation, got.State, got.Migration)
				}
			case "src-new":
				if got.Migration != nil || got.NodeID != src.ID || got.AdoptGeneration != gen || got.Generation <= gen {
					t.Fatalf("want a new generation on the source adopting %d: node %s gen %d adopt %d migration %+v", gen, got.NodeID, got.Generation, got.AdoptGeneration, got.Migration)
				}
			case "dst":
				if got.Migration != nil || got.NodeID != dst.ID || got.AdoptGeneration != gen || got.Generation <= gen {
					t.Fatalf("want placed on the destination adopting %d: node %s gen %d adopt %d migration %+v", gen, got.NodeID, got.Generation, got.AdoptGeneration, got.Migration)
				}
			}
			if task.Steps[0].State != tt.wantStep {
				t.Fatalf("step %s (%s), want %s", task.Steps[0].State, task.Steps[0].Error, tt.wantStep)
			}
		})
	}
}

func TestMigrationSettleRefusals(t *testing.T) {
	h := newHarness(t)
	src, dst, other := node("src"), node("dst"), node("other")
	for _, n := range []structs.Node{src, dst, other} {
		h.must("", CmdRegisterNode, RegisterNode{Node: n})
	}
	v := vm("web")
	gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: src.ID}).Index
	if r := h.apply("", CmdMigrationSettle, MigrationSettle{VMID: v.ID, TaskID: "t1", Generation: gen, Where: dst.ID}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("settle without a migration: %v", r.Err)
	}
	h.must("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: "t1", To: dst.ID, IfGeneration: gen})
	if r := h.apply("", CmdMigrationSettle, MigrationSettle{VMID: v.ID, TaskID: "t2", Generation: gen, Where: dst.ID}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("settle of another task's migration: %v", r.Err)
	}
	if r := h.apply("", CmdMigrationSettle, MigrationSettle{VMID: v.ID, TaskID: "t1", Generation: gen, Where: other.ID}); !errors.Is(r.Err, structs.ErrInvalid) ||
		!strings.Contains(r.Err.Error(), "where") {
		t.Fatalf("settle on a third node: %v", r.Err)
	}
	// An unknown outcome for another task, or from another placement, changes nothing.
	h.must("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t2", FromNode: src.ID, Generation: gen, Unknown: true})
	h.must("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: dst.ID, Generation: gen, Unknown: true})
	if got, _ := h.f.VM(v.ID); got.Held() {
		t.Fatalf("an unknown outcome that names another migration held the VM")
	}
}
