package fsmtest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// World is a real FSM driven through fsm.Direct on a manual clock. Tests
// embed it in a world of their own that adds the code under test.
type World struct {
	FSM    *fsm.FSM
	Direct *fsm.Direct // proposes straight into FSM, stamping commands with Clock
	Clock  *Clock

	t testing.TB
}

// New opens an FSM in t's temporary directory, closed when the test ends,
// with a Direct proposer over it on a clock reading Start.
func New(t testing.TB) *World {
	t.Helper()
	f, err := fsm.Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatalf("open fsm: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close fsm: %v", err)
		}
	})
	c := NewClock(Start)
	return &World{FSM: f, Direct: fsm.NewDirect(f, c.Now), Clock: c, t: t}
}

// Propose applies one command of the test's own (a fresh request id each
// time) and fails the test if the FSM refuses it.
func (w *World) Propose(typ fsm.CommandType, payload any) *fsm.Result {
	w.t.Helper()
	res, err := w.Direct.Propose(context.Background(), "", typ, payload)
	if err != nil {
		w.t.Fatalf("%s: %v", typ, err)
	}
	return res
}

// The capacity of a node RegisterNode registers: 8 vCPUs and 8 GiB.
const (
	NodeVCPUs     = 8
	NodeMemoryMiB = 8192
)

// RegisterNode registers a node called name, of NodeVCPUs and
// NodeMemoryMiB, under a fresh id, and returns the id.
func (w *World) RegisterNode(name string) string {
	w.t.Helper()
	id := uuid.NewString()
	w.Propose(fsm.CmdRegisterNode, fsm.RegisterNode{Node: structs.Node{ID: id, Name: name, VCPUs: NodeVCPUs, MemoryMiB: NodeMemoryMiB}})
	return id
}

// CreateVM creates vm placed on nodeID, or pending when nodeID is "",
// and returns it as stored.
func (w *World) CreateVM(vm structs.VM, nodeID string) *structs.VM {
	w.t.Helper()
	w.Propose(fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: nodeID})
	return w.VM(vm.ID)
}

// Observation is an agent's report that vm, at its current generation, is
// in state.
func Observation(vm *structs.VM, state string) structs.VMObservation {
	return structs.VMObservation{VMID: vm.ID, State: state, Reason: "test", Generation: vm.Generation}
}

// VM returns the VM of id, failing the test if there is none (or the read fails).
func (w *World) VM(id string) *structs.VM {
	w.t.Helper()
	v, err := w.FSM.VM(id)
	if err != nil {
		w.t.Fatal(err)
	}
	return v
}

// Node returns the node of id, failing the test if there is none (or the read fails).
func (w *World) Node(id string) *structs.Node {
	w.t.Helper()
	n, err := w.FSM.Node(id)
	if err != nil {
		w.t.Fatal(err)
	}
	return n
}

// Task returns the task of id, failing the test if there is none (or the read fails).
func (w *World) Task(id string) *structs.Task {
	w.t.Helper()
	tk, err := w.FSM.Task(id)
	if err != nil {
		w.t.Fatal(err)
	}
	return tk
}
