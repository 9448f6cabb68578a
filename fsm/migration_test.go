package fsm

import (
	"errors"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

func TestMigrationLifecycle(t *testing.T) {
	h := newHarness(t)
	src, dst := node("src"), node("dst")
	h.must("", CmdRegisterNode, RegisterNode{Node: src})
	h.must("", CmdRegisterNode, RegisterNode{Node: dst})
	v := vm("web")
	created := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: src.ID})
	gen := created.Index
	h.must("", CmdPutTask, PutTask{Task: structs.Task{ID: "t1", Kind: structs.TaskMigrate, State: structs.TaskRunning,
		Steps: []structs.TaskStep{{VMID: v.ID, From: src.ID, To: dst.ID, State: structs.TaskRunning}}}})

	// A stale start is refused; a good one records the order and wakes both nodes.
	if r := h.apply("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: "t1", To: dst.ID, IfGeneration: gen + 1}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("stale migration start: %v", r.Err)
	}
	start := h.must("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: "t1", To: dst.ID, IfGeneration: gen})
	if h.f.NodeIndex(dst.ID) != start.Index {
		t.Fatalf("destination not woken by the migration order")
	}
	if r := h.apply("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: "t2", To: dst.ID, IfGeneration: gen}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("second migration while one is in flight: %v", r.Err)
	}
	if r := h.apply("", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: dst.ID}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("re-placement during a migration: %v", r.Err)
	}
	// Success from the source: placement moves with a new generation, and
	// the destination adopts the arrived domain's generation.
	end := h.must("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: src.ID, Generation: gen, OK: true})
	got, _ := h.f.VM(v.ID)
	if got.NodeID != dst.ID || got.Generation != end.Index || got.AdoptGeneration != gen || got.Migration != nil {
		t.Fatalf("after migration: node %s gen %d adopt %d migration %v", got.NodeID, got.Generation, got.AdoptGeneration, got.Migration)
	}
	task, _ := h.f.Task("t1")
	if task.Steps[0].State != structs.TaskSucceeded {
		t.Fatalf("task step %s, want succeeded", task.Steps[0].State)
	}
	if on, _, _ := h.f.VMsOnNode(src.ID); len(on) != 0 {
		t.Fatalf("source still lists the VM")
	}
	// A later plain re-placement forgets the adoption.
	h.must("", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: src.ID, IfGeneration: got.Generation})
	if got, _ := h.f.VM(v.ID); got.AdoptGeneration != 0 {
		t.Fatalf("adopt generation kept after a re-placement")
	}
}

func TestMigrationFailureKeepsPlacement(t *testing.T) {
	h := newHarness(t)
	src, dst := node("src"), node("dst")
	h.must("", CmdRegisterNode, RegisterNode{Node: src})
	h.must("", CmdRegisterNode, RegisterNode{Node: dst})
	v := vm("web")
	gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: src.ID}).Index
	h.must("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: "t1", To: dst.ID, IfGeneration: gen})
	h.must("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t1", FromNode: src.ID, Generation: gen, Error: "connection refused"})
	got, _ := h.f.VM(v.ID)
	if got.NodeID != src.ID || got.Generation != gen || got.Migration != nil {
		t.Fatalf("after a failed migration: node %s gen %d migration %v", got.NodeID, got.Generation, got.Migration)
	}
	// A late success report (the order had timed out) still moves the VM
	// when the generation matches: the domain really is on the destination.
	h.must("", CmdPutTask, PutTask{Task: structs.Task{ID: "t3", Kind: structs.TaskMigrate, State: structs.TaskFailed,
		Steps: []structs.TaskStep{{VMID: v.ID, From: src.ID, To: dst.ID, State: structs.TaskFailed}}}})
	h.must("", CmdMigrationEnd, MigrationEnd{VMID: v.ID, TaskID: "t3", FromNode: src.ID, Generation: gen, OK: true})
	if got, _ := h.f.VM(v.ID); got.NodeID != dst.ID {
		t.Fatalf("late success not recorded: node %s", got.NodeID)
	}
}

func TestAdoptChecksGeneration(t *testing.T) {
	h := newHarness(t)
	a, b, c := node("a"), node("b"), node("c")
	for _, n := range []structs.Node{a, b, c} {
		h.must("", CmdRegisterNode, RegisterNode{Node: n})
	}
	v := vm("web")
	gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: a.ID}).Index
	// b adopts at the current generation: accepted.
	r := h.must("", CmdAdopt, Adopt{VMID: v.ID, NodeID: b.ID, Generation: gen})
	got, _ := h.f.VM(v.ID)
	if got.NodeID != b.ID || got.Generation != r.Index || got.AdoptGeneration != gen {
		t.Fatalf("after adoption: %+v", got)
	}
	// c adopts the same old generation: refused, nothing changes.
	if r := h.apply("", CmdAdopt, Adopt{VMID: v.ID, NodeID: c.ID, Generation: gen}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("second adoption of an old generation: %v", r.Err)
	}
	if again, _ := h.f.VM(v.ID); again.NodeID != b.ID {
		t.Fatalf("refused adoption moved the VM")
	}
}

func TestEnableReleasesLocalDrain(t *testing.T) {
	h := newHarness(t)
	n := node("a")
	h.must("", CmdRegisterNode, RegisterNode{Node: n})
	id, yes := "drain-1", true
	h.must("", CmdSetNodeFlags, SetNodeFlags{NodeID: n.ID, LocalDrained: &yes, LocalDrainID: &id})
	h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeDrained})
	got, _ := h.f.Node(n.ID)
	if got.ReleasedDrainID != "" {
		t.Fatalf("drain released before enable")
	}
	h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeEnabled})
	got, _ = h.f.Node(n.ID)
	if got.ReleasedDrainID != id {
		t.Fatalf("enable did not release local drain %q (released %q)", id, got.ReleasedDrainID)
	}
}
