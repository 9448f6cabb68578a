package fsmtest_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

func TestClockMovesOnlyWhenAdvanced(t *testing.T) {
	c := fsmtest.NewClock(fsmtest.Start)
	if got := c.Now(); !got.Equal(fsmtest.Start) {
		t.Fatalf("new clock reads %s, want %s", got, fsmtest.Start)
	}
	// Advanced from many goroutines at once (the race detector watches),
	// it loses no step.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Advance(time.Second)
			_ = c.Now()
		}()
	}
	wg.Wait()
	if got, want := c.Now(), fsmtest.Start.Add(50*time.Second); !got.Equal(want) {
		t.Fatalf("after 50 advances of 1s the clock reads %s, want %s", got, want)
	}
}

func TestWorldWritesAndReadsBack(t *testing.T) {
	w := fsmtest.New(t)
	w.Clock.Advance(time.Minute)
	id := w.RegisterNode("hv1")
	n := w.Node(id)
	if n.Name != "hv1" || n.VCPUs != fsmtest.NodeVCPUs || n.MemoryMiB != fsmtest.NodeMemoryMiB {
		t.Fatalf("registered node %+v, want hv1 of %d vCPUs and %d MiB", n, fsmtest.NodeVCPUs, fsmtest.NodeMemoryMiB)
	}
	// The proposer stamps commands with the world's clock.
	evs, err := w.FSM.Events(0, 10)
	if err != nil || len(evs) != 1 || evs[0].Kind != "node.registered" || !evs[0].Time.Equal(fsmtest.Start.Add(time.Minute)) {
		t.Fatalf("events after one registration: %+v, %v; want node.registered at %s", evs, err, fsmtest.Start.Add(time.Minute))
	}

	spec := structs.VMSpec{VCPUs: 1, MemoryMiB: 512}
	placed := w.CreateVM(structs.VM{ID: uuid.NewString(), Name: "web", DesiredState: structs.DesiredRunning, Spec: spec}, id)
	pending := w.CreateVM(structs.VM{ID: uuid.NewString(), Name: "db", DesiredState: structs.DesiredRunning, Spec: spec}, "")
	if placed.NodeID != id || placed.Name != "web" || pending.NodeID != "" || pending.Name != "db" {
		t.Fatalf("created web on %q and db on %q, want web on %s and db pending", placed.NodeID, pending.NodeID, id)
	}
	w.Propose(fsm.CmdObserve, fsm.Observe{NodeID: id, Observations: []structs.VMObservation{fsmtest.Observation(placed, structs.StateRunning)}})
	if got := w.VM(placed.ID); got.State != structs.StateRunning {
		t.Fatalf("vm is %s after its node observed it running, want running", got.State)
	}
	taskID := uuid.NewString()
	w.Propose(fsm.CmdPutTask, fsm.PutTask{Task: structs.Task{ID: taskID, Kind: structs.TaskMigrate, VMID: placed.ID,
		State: structs.TaskPending, Steps: []structs.TaskStep{{VMID: placed.ID, From: id, State: structs.TaskPending}}}})
	if tk := w.Task(taskID); tk.Kind != structs.TaskMigrate || tk.VMID != placed.ID || len(tk.Steps) != 1 {
		t.Fatalf("task read back as %+v", tk)
	}
}

// failure is a testing.TB whose Fatal and Fatalf record the message and
// end the goroutine, as testing.T's do; everything else is t's.
type failure struct {
	testing.TB
	msg string
}

func (f *failure) Helper() {}

func (f *failure) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *failure) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestHelpersFailTheTest: a helper that cannot do what it says fails the
// test, so that a test built on them never goes on with a nil VM or a
// refused command.
func TestHelpersFailTheTest(t *testing.T) {
	tests := []struct {
		name string
		call func(w *fsmtest.World)
		want string // in the failure message
	}{
		{"refused command", func(w *fsmtest.World) {
			w.Propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: uuid.NewString(), State: structs.NodeDrained})
		}, string(fsm.CmdSetManagement)},
		{"vm placed on no such node", func(w *fsmtest.World) {
			w.CreateVM(structs.VM{ID: uuid.NewString(), Name: "web", DesiredState: structs.DesiredRunning,
				Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 512}}, uuid.NewString())
		}, string(fsm.CmdCreateVM)},
		{"no such vm", func(w *fsmtest.World) { w.VM(uuid.NewString()) }, "not found"},
		{"no such node", func(w *fsmtest.World) { w.Node(uuid.NewString()) }, "not found"},
		{"no such task", func(w *fsmtest.World) { w.Task(uuid.NewString()) }, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &failure{TB: t}
			w := fsmtest.New(f)
			done := make(chan struct{})
			returned := false
			go func() {
				defer close(done)
				tt.call(w)
				returned = true
			}()
			<-done
			if returned || !strings.Contains(f.msg, tt.want) {
				t.Fatalf("helper returned: %v, failure %q; want the test failed with a message containing %q", returned, f.msg, tt.want)
			}
		})
	}
}
