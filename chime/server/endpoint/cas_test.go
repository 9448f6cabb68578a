package endpoint_test

import (
	"context"
	"errors"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

// pauseBefore is the fixture's proposer: fsm.Direct, with one armed pause.
// The armed function runs just before the nth proposal of a command type
// is applied, after the proposer has read the state and decided: exactly
// where a concurrent operator request lands in production (the proposer
// waits on a Raft commit). It is how these tests make two operations
// interleave inside an endpoint, deterministically.
type pauseBefore struct {
	*fsm.Direct
	typ    fsm.CommandType
	n      int
	fn     func()
	paused bool // fn is running: its own proposals pass
}

// Arm makes fn run before the nth next proposal of typ.
func (p *pauseBefore) Arm(typ fsm.CommandType, n int, fn func()) { p.typ, p.n, p.fn = typ, n, fn }

// Fired reports whether the armed function ran.
func (p *pauseBefore) Fired() bool { return p.fn == nil }

func (p *pauseBefore) Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	if p.fn != nil && !p.paused && typ == p.typ {
		if p.n--; p.n <= 0 {
			fn := p.fn
			p.fn, p.paused = nil, true
			fn()
			p.paused = false
		}
	}
	return p.Direct.Propose(ctx, reqID, typ, payload)
}

// drainedAndAcked builds hv1 with the VMs named (stopped, placed there),
// hv2 empty, hv1 drained and its drain acknowledged by a heartbeat sent
// after the agent applied the drain: a node every rebuild may take.
func drainedAndAcked(t *testing.T, w *world, names ...string) {
	t.Helper()
	ctx := w.ctx
	w.register("reg-1", hv1ID, "hv1", 1)
	for _, name := range names {
		if _, err := w.ep.CreateVM(ctx, "create-"+name, api.CreateVMRequest{Name: name, VCPUs: 1, Memory: 512}); err != nil {
			t.Fatal(err)
		}
	}
	w.register("reg-2", hv2ID, "hv2", 2)
	if _, err := w.ep.NodeAction(ctx, "drain", hv1ID, endpoint.NodeDrain, false); err != nil {
		t.Fatal(err)
	}
	ds, err := w.ep.Desired(w.Node(hv1ID))
	if err != nil {
		t.Fatal(err)
	}
	var obs []structs.VMObservation
	for _, name := range names {
		obs = append(obs, fsmtest.Observation(w.vm(name), structs.StateStopped))
	}
	if _, err := w.ep.Heartbeat(ctx, w.Node(hv1ID), api.HeartbeatRequest{NodeID: hv1ID, VMs: obs, DesiredIndex: ds.Index}); err != nil {
		t.Fatal(err)
	}
	if n := w.Node(hv1ID); !n.DrainAcked || n.ManagementState != structs.NodeDrained {
		t.Fatalf("fixture: hv1 %s, drain acknowledged %v: want drained and acknowledged", n.ManagementState, n.DrainAcked)
	}
}

// Uniqueness rule 11: a rebuild decided on a drained, acknowledged node
// loses, cleanly and with a conflict naming the node's modify index, to an
// enable that lands between its read and its placements. Without the
// compare-and-set the placements commit on an enabled node whose agent may
// already start the VMs it was just told to run again.
func TestRebuildLosesToAConcurrentEnable(t *testing.T) {
	tests := []struct {
		name    string
		vms     []string
		confirm bool            // --confirm-fenced
		at      fsm.CommandType // the enable lands just before this proposal of the rebuild
		nth     int
		moved   int // VMs the rebuild placed before it lost
	}{
		{"before the first placement", []string{"web"}, false, fsm.CmdPlaceVM, 1, 0},
		{"before the fence of --confirm-fenced", []string{"web"}, true, fsm.CmdSetNodeFlags, 1, 0},
		{"after the fence, before the placement", []string{"web"}, true, fsm.CmdPlaceVM, 1, 0},
		{"between two placements", []string{"web", "db"}, false, fsm.CmdPlaceVM, 2, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			drainedAndAcked(t, w, tc.vms...)
			before := map[string]*structs.VM{}
			for _, name := range tc.vms {
				before[name] = w.vm(name)
			}
			var enableErr error
			w.pauses.Arm(tc.at, tc.nth, func() {
				_, enableErr = w.ep.NodeAction(w.ctx, "enable", hv1ID, endpoint.NodeEnable, false)
			})
			_, err := w.ep.NodeAction(w.ctx, "rebuild", hv1ID, endpoint.NodeRebuild, tc.confirm)
			if !w.pauses.Fired() {
				t.Fatal("the concurrent enable never ran: the rebuild made no such proposal")
			}
			if enableErr != nil {
				t.Fatalf("the concurrent enable failed: %v", enableErr)
			}
			if !errors.Is(err, structs.ErrConflict) || api.AsError(err).Field != "node_modify_index" {
				t.Fatalf("rebuild answered %v, want a conflict naming node_modify_index", err)
			}
			if got := api.StatusOf(err); got != 409 {
				t.Fatalf("rebuild's refusal maps to HTTP %d, want 409", got)
			}
			moved := 0
			for _, name := range tc.vms {
				got := w.vm(name)
				if got.NodeID == hv1ID && got.Generation == before[name].Generation {
					continue
				}
				moved++
			}
			if moved != tc.moved {
				t.Fatalf("%d VMs moved, want %d (the placements committed before the enable only)", moved, tc.moved)
			}
			tasks, err := w.FSM.Tasks()
			if err != nil {
				t.Fatal(err)
			}
			rebuilds := 0
			for _, tk := range tasks {
				if tk.Kind == structs.TaskRebuild {
					rebuilds++
					if tk.State != structs.TaskFailed {
						t.Fatalf("the partial rebuild's task is %s, want failed", tk.State)
					}
				}
			}
			if want := min(tc.moved, 1); rebuilds != want {
				t.Fatalf("%d rebuild tasks recorded, want %d (a rebuild that moved nothing records nothing)", rebuilds, want)
			}
			if n := w.Node(hv1ID); n.ManagementState != structs.NodeEnabled || n.Fenced {
				t.Fatalf("hv1 %s fenced %v after the enable, want enabled and not fenced", n.ManagementState, n.Fenced)
			}
		})
	}
}

// The other order: an enable (and a disable) decided on the node as read
// loses to a drain that lands first; the node stays drained.
func TestEnableLosesToAConcurrentDrain(t *testing.T) {
	for _, op := range []endpoint.NodeOp{endpoint.NodeEnable, endpoint.NodeDisable} {
		t.Run(string(op), func(t *testing.T) {
			w := newWorld(t)
			w.register("reg-1", hv1ID, "hv1", 1)
			var drainErr error
			w.pauses.Arm(fsm.CmdSetManagement, 1, func() {
				_, drainErr = w.ep.NodeAction(w.ctx, "drain", hv1ID, endpoint.NodeDrain, false)
			})
			_, err := w.ep.NodeAction(w.ctx, string(op), hv1ID, op, false)
			if drainErr != nil {
				t.Fatalf("the concurrent drain failed: %v", drainErr)
			}
			if !errors.Is(err, structs.ErrConflict) || api.AsError(err).Field != "node_modify_index" {
				t.Fatalf("%s answered %v, want a conflict naming node_modify_index", op, err)
			}
			if n := w.Node(hv1ID); n.ManagementState != structs.NodeDrained {
				t.Fatalf("hv1 is %s, want drained (the enable lost)", n.ManagementState)
			}
			// Decided again on the node as it is now, it goes through.
			if _, err := w.ep.NodeAction(w.ctx, string(op)+"-again", hv1ID, op, false); err != nil {
				t.Fatalf("%s on the fresh state: %v", op, err)
			}
		})
	}
}

// A cold move (a stopped VM re-placed by an evacuation) decided while the
// VM is stopped loses to a start that lands before its placement: the
// step decides again instead of moving a VM its agent is starting.
func TestColdMoveLosesToAConcurrentStart(t *testing.T) {
	w := newWorld(t)
	ctx := w.ctx
	w.register("reg-1", hv1ID, "hv1", 1)
	if _, err := w.ep.CreateVM(ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512, Stopped: true}); err != nil {
		t.Fatal(err)
	}
	w.register("reg-2", hv2ID, "hv2", 2)
	web := w.vm("web")
	w.heartbeat(hv1ID, fsmtest.Observation(web, structs.StateStopped))
	res, err := w.ep.NodeAction(ctx, "evacuate", hv1ID, endpoint.NodeEvacuate, false)
	if err != nil {
		t.Fatal(err)
	}
	var startErr error
	w.pauses.Arm(fsm.CmdPlaceVM, 1, func() {
		_, startErr = w.ep.VMAction(ctx, "start-web", "web", endpoint.VMStart)
	})
	if err := w.runner.Step(ctx); err != nil {
		t.Fatalf("runner step: %v", err)
	}
	if !w.pauses.Fired() {
		t.Fatal("the runner proposed no cold move")
	}
	if startErr != nil {
		t.Fatalf("the concurrent start failed: %v", startErr)
	}
	got := w.vm("web")
	if got.NodeID != hv1ID || got.Generation != web.Generation {
		t.Fatalf("web moved to %s (generation %d) although it was started meanwhile", got.NodeID, got.Generation)
	}
	step := w.Task(res.Task.ID).Steps[0]
	if step.State != structs.TaskPending {
		t.Fatalf("the step is %s (%s), want pending: decided again on the new state", step.State, step.Error)
	}
	// Once the agent reports it running, the step live-migrates it.
	w.heartbeat(hv1ID, fsmtest.Observation(got, structs.StateRunning))
	if err := w.runner.Step(ctx); err != nil {
		t.Fatalf("runner step: %v", err)
	}
	if m := w.vm("web").Migration; m == nil || m.To != hv2ID {
		t.Fatalf("after the report: migration %+v, want a live migration to hv2", m)
	}
}

// Finding 11: `node enable` releases a local drain also on a node that is
// enabled already (a local drain changes no management state), and the
// agent learns it from its desired state.
func TestEnableReleasesALocalDrainOnAnEnabledNode(t *testing.T) {
	w := newWorld(t)
	ctx := w.ctx
	w.register("reg-1", hv1ID, "hv1", 1)
	if _, err := w.ep.CreateVM(ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512}); err != nil {
		t.Fatal(err)
	}
	ds, err := w.ep.Desired(w.Node(hv1ID))
	if err != nil {
		t.Fatal(err)
	}
	hb := api.HeartbeatRequest{NodeID: hv1ID, VMs: []structs.VMObservation{fsmtest.Observation(w.vm("web"), structs.StateStopped)},
		DesiredIndex: ds.Index, LocalDrainState: structs.LocalDrainDone, LocalDrained: true, LocalDrainID: "d-1"}
	if _, err := w.ep.Heartbeat(ctx, w.Node(hv1ID), hb); err != nil {
		t.Fatal(err)
	}
	if n := w.Node(hv1ID); n.ManagementState != structs.NodeEnabled || n.LocalDrainID != "d-1" {
		t.Fatalf("fixture: hv1 %s local drain %q, want enabled with local drain d-1", n.ManagementState, n.LocalDrainID)
	}
	if _, err := w.ep.NodeAction(ctx, "enable", hv1ID, endpoint.NodeEnable, false); err != nil {
		t.Fatalf("enable: %v", err)
	}
	if n := w.Node(hv1ID); n.ReleasedDrainID != "d-1" {
		t.Fatalf("released drain %q after enable, want d-1", n.ReleasedDrainID)
	}
	after, err := w.ep.Desired(w.Node(hv1ID))
	if err != nil {
		t.Fatal(err)
	}
	if after.ReleasedDrainID != "d-1" || after.Index <= ds.Index {
		t.Fatalf("desired state %+v (index %d before): want released drain d-1 at a newer index (the agent's query wakes)", after, ds.Index)
	}
	// A second enable has nothing to release: it changes nothing.
	idx := w.FSM.Index()
	mod := w.Node(hv1ID).ModifyIndex
	if _, err := w.ep.NodeAction(ctx, "enable-2", hv1ID, endpoint.NodeEnable, false); err != nil {
		t.Fatalf("second enable: %v", err)
	}
	if w.Node(hv1ID).ModifyIndex != mod || w.FSM.Index() != idx+1 {
		t.Fatalf("second enable changed the node (modify %d → %d)", mod, w.Node(hv1ID).ModifyIndex)
	}
}
