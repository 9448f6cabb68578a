package tasks

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

// world is a real FSM driven by fsm.Direct on a manual clock (fsmtest),
// with a real placer and the runner under test: no Raft, no HTTP, no
// agents.
type world struct {
	*fsmtest.World
	t      *testing.T
	runner *Runner
}

func newWorld(t *testing.T) *world {
	t.Helper()
	fx := fsmtest.New(t)
	p := placement.New(placement.Config{State: fx.FSM, Proposer: fx.Direct})
	return &world{World: fx, t: t,
		runner: New(Config{State: fx.FSM, Proposer: fx.Direct, Placer: p, Clock: fx.Clock})}
}

// vm creates a 1 vCPU, 512 MiB VM placed on nodeID and, unless state is
// empty, has that node's agent report it in that state.
func (w *world) vm(name, nodeID, desired, state string) *structs.VM {
	w.t.Helper()
	v := structs.VM{ID: uuid.NewString(), Name: name, DesiredState: desired, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 512}}
	cur := w.CreateVM(v, nodeID)
	if state != "" {
		w.Propose(fsm.CmdObserve, fsm.Observe{NodeID: nodeID, Observations: []structs.VMObservation{fsmtest.Observation(cur, state)}})
	}
	got := w.VM(v.ID)
	if state != "" && got.State != state {
		w.t.Fatalf("vm %s is %s after the report, want %s", name, got.State, state)
	}
	return got
}

func (w *world) create(t structs.Task) *structs.Task {
	w.t.Helper()
	got, err := w.runner.Create(context.Background(), "", t)
	if err != nil {
		w.t.Fatal(err)
	}
	return got
}

func (w *world) step() {
	w.t.Helper()
	if err := w.runner.Step(context.Background()); err != nil {
		w.t.Fatalf("step: %v", err)
	}
}

func TestMigrateStartsThenOutcomeUnknown(t *testing.T) {
	w := newWorld(t)
	src, dst := w.RegisterNode("hv1"), w.RegisterNode("hv2")
	vm := w.vm("web", src, structs.DesiredRunning, structs.StateRunning)
	task := w.create(structs.Task{Kind: structs.TaskMigrate, VMID: vm.ID,
		Steps: []structs.TaskStep{{VMID: vm.ID, From: src, State: structs.TaskPending}}})

	w.step()
	got := w.VM(vm.ID)
	want := structs.Migration{TaskID: task.ID, From: src, To: dst, Generation: vm.Generation}
	if got.Migration == nil || *got.Migration != want {
		t.Fatalf("after the first step the vm's migration is %+v, want %+v", got.Migration, want)
	}
	tk := w.Task(task.ID)
	if tk.State != structs.TaskRunning || tk.Steps[0].State != structs.TaskRunning || tk.Steps[0].To != dst {
		t.Fatalf("task after the first step: %+v", tk)
	}

	// The runner starts counting when it first sees the step in flight.
	w.step()
	w.Clock.Advance(MigrationTimeout - time.Minute)
	w.step()
	if cur := w.Task(task.ID); cur.ModifyIndex != tk.ModifyIndex || w.VM(vm.ID).Migration == nil {
		t.Fatalf("a step within the timeout changed the task (%d → %d) or cleared the migration", tk.ModifyIndex, cur.ModifyIndex)
	}

	// Past the timeout with no report from the source: the outcome is
	// unknown, not failed. The VM is held on its source, the step waits.
	w.Clock.Advance(2 * time.Minute)
	w.step()
	got = w.VM(vm.ID)
	if !got.Held() || got.NodeID != src || got.State != structs.StateHeld || !strings.Contains(got.Migration.UnknownReason, "no result from the source agent") {
		t.Fatalf("after the timeout: node %s state %s migration %+v, want held on the source", got.NodeID, got.State, got.Migration)
	}
	held := w.Task(task.ID)
	if held.State != structs.TaskRunning || held.Steps[0].State != structs.TaskRunning {
		t.Fatalf("task while the vm is held: %+v", held)
	}
	// Held: no timeout ends it, however long it lasts.
	w.Clock.Advance(10 * MigrationTimeout)
	w.step()
	w.step()
	if cur := w.Task(task.ID); cur.ModifyIndex != held.ModifyIndex || !w.VM(vm.ID).Held() {
		t.Fatalf("a held vm's task was changed by a timeout: %+v, vm %+v", cur, w.VM(vm.ID).Migration)
	}
}

// TestTimeoutsOnTheLeadersOwnWatch: a step's wait is measured by the
// runner that runs it, from when it first saw it, whatever the task's
// timestamps (written by another leader, whose clock may be far off).
func TestTimeoutsOnTheLeadersOwnWatch(t *testing.T) {
	tests := []struct {
		name string
		// before runs before the new leader's runner first sees the step:
		// the task's stamps age on the clock the old leader wrote them on.
		before  time.Duration
		after   time.Duration // on the new runner's watch
		unknown bool
	}{
		{"stamps an hour old, new leader just took over", time.Hour, 0, false},
		{"stamps an hour old, new leader waited less than the timeout", time.Hour, MigrationTimeout - time.Second, false},
		{"new leader waited past the timeout", 0, MigrationTimeout + time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			src, _ := w.RegisterNode("hv1"), w.RegisterNode("hv2")
			vm := w.vm("web", src, structs.DesiredRunning, structs.StateRunning)
			w.create(structs.Task{Kind: structs.TaskMigrate, VMID: vm.ID,
				Steps: []structs.TaskStep{{VMID: vm.ID, From: src, State: structs.TaskPending}}})
			w.step() // the old leader starts the migration
			w.Clock.Advance(tt.before)
			// A leader change: a fresh runner over the same state.
			p := placement.New(placement.Config{State: w.FSM, Proposer: w.Direct})
			next := New(Config{State: w.FSM, Proposer: w.Direct, Placer: p, Clock: w.Clock})
			if err := next.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
			w.Clock.Advance(tt.after)
			if err := next.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := w.VM(vm.ID); got.Held() != tt.unknown {
				t.Fatalf("held = %v, want %v (migration %+v)", got.Held(), tt.unknown, got.Migration)
			}
		})
	}
}

func TestEvacuateMovesStoppedVMCold(t *testing.T) {
	w := newWorld(t)
	src, dst := w.RegisterNode("hv1"), w.RegisterNode("hv2")
	vm := w.vm("db", src, structs.DesiredStopped, structs.StateStopped)
	task := w.create(structs.Task{Kind: structs.TaskEvacuate, NodeID: src,
		Steps: []structs.TaskStep{{VMID: vm.ID, From: src, State: structs.TaskPending}}})

	w.step()
	got := w.VM(vm.ID)
	if got.NodeID != dst || got.Migration != nil || got.Generation <= vm.Generation {
		t.Fatalf("stopped vm after the step: node %s migration %+v generation %d (was %d), want a cold move to %s",
			got.NodeID, got.Migration, got.Generation, vm.Generation, dst)
	}
	tk := w.Task(task.ID)
	if tk.Steps[0].State != structs.TaskSucceeded || tk.Steps[0].To != dst {
		t.Fatalf("step after the cold move: %+v", tk.Steps[0])
	}
	w.step()
	if tk = w.Task(task.ID); tk.State != structs.TaskSucceeded {
		t.Fatalf("task after its only step succeeded: %s %q", tk.State, tk.Error)
	}
}

func TestStepWaitsForAnUnknownVMThenFails(t *testing.T) {
	w := newWorld(t)
	src, _ := w.RegisterNode("hv1"), w.RegisterNode("hv2")
	vm := w.vm("cache", src, structs.DesiredRunning, "") // no report yet: state unknown
	task := w.create(structs.Task{Kind: structs.TaskEvacuate, NodeID: src,
		Steps: []structs.TaskStep{{VMID: vm.ID, From: src, State: structs.TaskPending}}})

	// Neither live nor safely cold: the step waits, the task is running.
	w.step()
	tk := w.Task(task.ID)
	if tk.State != structs.TaskRunning || tk.Steps[0].State != structs.TaskPending || tk.Steps[0].To != "" {
		t.Fatalf("task while the vm's state is unknown: %+v", tk)
	}
	w.Clock.Advance(StepDecideTimeout + time.Second)
	w.step()
	tk = w.Task(task.ID)
	if tk.Steps[0].State != structs.TaskFailed || !strings.Contains(tk.Steps[0].Error, "neither a live migration nor a safe cold move") {
		t.Fatalf("step after the decide timeout: %+v", tk.Steps[0])
	}
	if got := w.VM(vm.ID); got.NodeID != src || got.Migration != nil {
		t.Fatalf("vm of unknown state was moved: node %s migration %+v", got.NodeID, got.Migration)
	}
}

func TestDrainTask(t *testing.T) {
	tests := []struct {
		name      string
		then      func(w *world, node string)
		wantState string
		wantError string
	}{
		{"succeeds once the agent acknowledges", func(w *world, node string) {
			yes := true
			w.Propose(fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: node, DrainAcked: &yes})
		}, structs.TaskSucceeded, ""},
		{"succeeds on a local drain", func(w *world, node string) {
			yes := true
			w.Propose(fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: node, LocalDrained: &yes})
		}, structs.TaskSucceeded, ""},
		{"cancelled when the node is enabled again", func(w *world, node string) {
			w.Propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: node, State: structs.NodeEnabled})
		}, structs.TaskCancelled, "node enabled again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			node := w.RegisterNode("hv1")
			vm := w.vm("web", node, structs.DesiredRunning, structs.StateRunning)
			w.Propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: node, State: structs.NodeDrained})
			task := w.create(structs.Task{Kind: structs.TaskDrain, NodeID: node,
				Steps: []structs.TaskStep{{VMID: vm.ID, From: node, State: structs.TaskRunning}}})

			// Not acknowledged: pending → running, then nothing.
			w.step()
			tk := w.Task(task.ID)
			if tk.State != structs.TaskRunning {
				t.Fatalf("drain before the acknowledgement: %s", tk.State)
			}
			w.step()
			if cur := w.Task(task.ID); cur.ModifyIndex != tk.ModifyIndex {
				t.Fatalf("a step without news rewrote the drain task (%d → %d)", tk.ModifyIndex, cur.ModifyIndex)
			}

			tt.then(w, node)
			w.step()
			tk = w.Task(task.ID)
			if tk.State != tt.wantState || tk.Error != tt.wantError {
				t.Fatalf("drain: state %s error %q, want %s %q", tk.State, tk.Error, tt.wantState, tt.wantError)
			}
			if tt.wantState == structs.TaskSucceeded && tk.Steps[0].State != structs.TaskSucceeded {
				t.Fatalf("drain succeeded with step %+v", tk.Steps[0])
			}
		})
	}
}

func TestActiveFor(t *testing.T) {
	tasks := []structs.Task{
		{ID: "done", Kind: structs.TaskMigrate, State: structs.TaskSucceeded, Steps: []structs.TaskStep{{VMID: "v1", State: structs.TaskSucceeded}}},
		{ID: "evac", Kind: structs.TaskEvacuate, NodeID: "n1", State: structs.TaskRunning, Steps: []structs.TaskStep{
			{VMID: "v2", State: structs.TaskSucceeded}, {VMID: "v3", State: structs.TaskPending}}},
	}
	tests := []struct {
		name, vm, node, want string
	}{
		{"node with a running task", "", "n1", "evac"},
		{"other node", "", "n2", ""},
		{"vm with a pending step", "v3", "", "evac"},
		{"vm whose step is done", "v2", "", ""},
		{"vm of a finished task", "v1", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if at := ActiveFor(tasks, tt.vm, tt.node); at != nil {
				got = at.ID
			}
			if got != tt.want {
				t.Fatalf("ActiveFor(%q, %q) = %q, want %q", tt.vm, tt.node, got, tt.want)
			}
		})
	}
}
