package placement

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
	"github.com/chime-ha/chime/scheduler"
)

// world is a real FSM driven by fsm.Direct (fsmtest), with the placer
// under test.
type world struct {
	*fsmtest.World
	placer *Placer
}

func newWorld(t *testing.T) *world {
	t.Helper()
	fx := fsmtest.New(t)
	return &world{World: fx, placer: New(Config{State: fx.FSM, Proposer: fx.Direct})}
}

// bigVM is a VM of 6 GiB: two never fit one 8 GiB node (fsmtest.RegisterNode's).
func bigVM(name string) structs.VM {
	return structs.VM{ID: uuid.NewString(), Name: name, DesiredState: structs.DesiredRunning,
		Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 6144}}
}

func (w *world) placedOn(vmID string) string {
	return w.VM(vmID).NodeID
}

func TestPendingVMPlacedWhenANodeRegisters(t *testing.T) {
	w := newWorld(t)
	a, b := bigVM("a"), bigVM("b")
	w.CreateVM(a, "") // no node yet: pending
	w.CreateVM(b, "")
	if n := w.placer.PlacePending(context.Background()); n != 0 {
		t.Fatalf("placed %d VMs with no node", n)
	}

	// One node with room for one of them: exactly one is placed, because
	// each decision of the pass sees the one before it.
	n1 := w.RegisterNode("hv1")
	if n := w.placer.PlacePending(context.Background()); n != 1 {
		t.Fatalf("placed %d VMs on one 8 GiB node, want 1", n)
	}
	onA, onB := w.placedOn(a.ID), w.placedOn(b.ID)
	if (onA == n1) == (onB == n1) || onA+onB != n1 {
		t.Fatalf("after hv1 registered: a on %q, b on %q; want exactly one on %s and the other pending", onA, onB, n1)
	}

	// A second node: the other one lands there.
	n2 := w.RegisterNode("hv2")
	if n := w.placer.PlacePending(context.Background()); n != 1 {
		t.Fatalf("placed %d VMs after hv2 registered, want 1", n)
	}
	if got := map[string]bool{w.placedOn(a.ID): true, w.placedOn(b.ID): true}; !got[n1] || !got[n2] {
		t.Fatalf("after hv2 registered: a on %s, b on %s; want one on each node", w.placedOn(a.ID), w.placedOn(b.ID))
	}
}

// TestDecideSerialisesPlacements runs a second decision while the first
// holds the lock between its scheduler call and its proposal. The second
// goroutine announces it is about to decide before the first proposes, so
// without the lock its read would see the node empty; with it, it reads
// only after the first VM is applied and finds no room. The outcome does
// not depend on scheduling.
func TestDecideSerialisesPlacements(t *testing.T) {
	w := newWorld(t)
	n1 := w.RegisterNode("hv1")
	a, b := bigVM("a"), bigVM("b")

	create := func(vm structs.VM) (string, error) {
		node, err := w.placer.Place(vm, nil)
		if err != nil && !errors.Is(err, scheduler.ErrNoCapacity) {
			return "", err
		}
		_, err = w.Direct.Propose(context.Background(), "", fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: node})
		return node, err
	}
	var (
		mu    sync.Mutex
		order []string
	)
	note := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, s)
	}
	entering := make(chan struct{})
	bDone := make(chan error, 1)
	var bNode string
	err := w.placer.Decide(func() error {
		node, err := w.placer.Place(a, nil)
		if err != nil || node != n1 {
			return errors.Join(err, errors.New("a not placeable on "+n1))
		}
		go func() {
			close(entering)
			bDone <- w.placer.Decide(func() error {
				note("b reads")
				var err error
				bNode, err = create(b)
				return err
			})
		}()
		<-entering
		if _, err := w.Direct.Propose(context.Background(), "", fsm.CmdCreateVM, fsm.CreateVM{VM: a, NodeID: node}); err != nil {
			return err
		}
		note("a applied")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-bDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second decision did not finish within 10s of the first")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[0] != "a applied" || order[1] != "b reads" {
		t.Fatalf("decision order %v, want [a applied, b reads]", order)
	}
	if w.placedOn(a.ID) != n1 || bNode != "" || w.placedOn(b.ID) != "" {
		t.Fatalf("a on %q, b on %q (decided %q): want a on %s and b pending", w.placedOn(a.ID), w.placedOn(b.ID), bNode, n1)
	}
}

func TestCheck(t *testing.T) {
	w := newWorld(t)
	free, full := w.RegisterNode("free"), w.RegisterNode("full")
	w.CreateVM(bigVM("resident"), full)
	tests := []struct {
		name string
		to   string
		want error // nil, structs.ErrNotFound or structs.ErrConflict
	}{
		{"node with room", free, nil},
		{"node without room", full, structs.ErrConflict},
		{"no such node", uuid.NewString(), structs.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := w.placer.Check(bigVM("new"), tt.to)
			if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Check = %v, want %v", err, tt.want)
			}
		})
	}
}
