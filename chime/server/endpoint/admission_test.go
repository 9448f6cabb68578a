package endpoint_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/server/tasks"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
	"github.com/chime-ha/chime/scheduler"
)

// newHAWorld is newWorld with admission control on (tolerate failures).
func newHAWorld(t *testing.T, tolerate int) (*world, *placement.Placer) {
	t.Helper()
	fx := fsmtest.New(t)
	f, d, clock := fx.FSM, fx.Direct, &timerClock{Clock: fx.Clock}
	p := placement.New(placement.Config{State: f, Proposer: d, HATolerate: tolerate})
	r := tasks.New(tasks.Config{State: f, Proposer: d, Placer: p, Clock: clock})
	m := heartbeat.New(heartbeat.Config{Interval: timing.HeartbeatInterval, Missed: timing.MissedHeartbeats,
		Proposer: d, State: f, Clock: clock})
	w := &world{World: fx, t: t, ctx: context.Background(), Clock: clock, runner: r}
	w.ep = endpoint.New(endpoint.Config{Proposer: d, State: f, Placer: p, Tasks: r, Monitor: m, Clock: clock,
		IDs: &seqIDs{}, Agents: agentConfig{}})
	return w, p
}

func refusedByAdmission(err error) bool {
	return errors.Is(err, structs.ErrConflict) && strings.Contains(err.Error(), scheduler.RuleTolerateFailures)
}

// TestAdmissionCreate: two 8 GiB nodes, tolerate 1 failure: ha VMs are
// admitted while the other node could take them all, then refused with a
// conflict naming the rule (HTTP 409); plain VMs and stopped ha VMs are
// not admission-checked; the refusal proposes nothing.
func TestAdmissionCreate(t *testing.T) {
	w, _ := newHAWorld(t, 1)
	w.register("", hv1ID, "hv1", 1)
	w.register("", hv2ID, "hv2", 2)
	steps := []struct {
		req     api.CreateVMRequest
		refused bool
	}{
		{api.CreateVMRequest{Name: "a", VCPUs: 1, Memory: 2048, HA: true}, false},
		{api.CreateVMRequest{Name: "b", VCPUs: 1, Memory: 2048, HA: true}, false},
		{api.CreateVMRequest{Name: "c", VCPUs: 1, Memory: 2048, HA: true}, false}, // 6 GiB total: one node holds all
		{api.CreateVMRequest{Name: "d", VCPUs: 1, Memory: 4096, HA: true}, true},
		{api.CreateVMRequest{Name: "plain", VCPUs: 1, Memory: 512}, false},
		{api.CreateVMRequest{Name: "later", VCPUs: 1, Memory: 1024, HA: true, Stopped: true}, false},
	}
	for _, st := range steps {
		before := w.FSM.Index()
		vm, err := w.ep.CreateVM(w.ctx, "", st.req)
		switch {
		case st.refused && !refusedByAdmission(err):
			t.Fatalf("create %s: %v, want a conflict naming %s", st.req.Name, err, scheduler.RuleTolerateFailures)
		case st.refused:
			if w.FSM.Index() != before {
				t.Fatalf("a refused create proposed something")
			}
			if api.StatusOf(err) != 409 {
				t.Fatalf("status %d, want 409", api.StatusOf(err))
			}
		case err != nil:
			t.Fatalf("create %s: %v", st.req.Name, err)
		case vm.NodeID == "":
			t.Fatalf("create %s: left pending", st.req.Name)
		}
	}
	// Starting the stopped ha VM: either node can still take the other's
	// ha VMs (hv1: a, c; hv2: b, plain, later).
	if _, err := w.ep.VMAction(w.ctx, "", "later", endpoint.VMStart); err != nil {
		t.Fatalf("start later: %v", err)
	}
	// Stop it; a plain VM (never admission-checked) takes hv2's reserve,
	// and the start of the ha VM is refused.
	if _, err := w.ep.VMAction(w.ctx, "", "later", endpoint.VMStop); err != nil {
		t.Fatal(err)
	}
	if vm, err := w.ep.CreateVM(w.ctx, "", api.CreateVMRequest{Name: "e", VCPUs: 1, Memory: 2560}); err != nil {
		t.Fatalf("create e: %v", err)
	} else if vm.NodeID != hv2ID {
		t.Fatalf("e placed on %s, want hv2", vm.NodeID)
	}
	before := w.FSM.Index()
	if _, err := w.ep.VMAction(w.ctx, "", "later", endpoint.VMStart); !refusedByAdmission(err) {
		t.Fatalf("start later: %v, want a refusal", err)
	}
	if w.FSM.Index() != before || w.vm("later").DesiredState != structs.DesiredStopped {
		t.Fatal("a refused start changed the state")
	}
	// A restart of a stopped ha VM is a start: refused too. Stop stays allowed.
	if _, err := w.ep.VMAction(w.ctx, "", "later", endpoint.VMRestart); !refusedByAdmission(err) {
		t.Fatalf("restart later: %v, want a refusal", err)
	}
	if _, err := w.ep.VMAction(w.ctx, "", "a", endpoint.VMStop); err != nil {
		t.Fatalf("stop a: %v", err)
	}
}

// TestAdmissionNodeCount: one node cannot tolerate one failure, so every
// running ha VM is refused; tolerate 0 turns the check off.
func TestAdmissionNodeCount(t *testing.T) {
	for _, tc := range []struct {
		tolerate int
		refused  bool
	}{{0, false}, {1, true}, {3, true}} {
		w, _ := newHAWorld(t, tc.tolerate)
		w.register("", hv1ID, "hv1", 1)
		_, err := w.ep.CreateVM(w.ctx, "", api.CreateVMRequest{Name: "a", VCPUs: 1, Memory: 512, HA: true})
		if refusedByAdmission(err) != tc.refused || (!tc.refused && err != nil) {
			t.Fatalf("tolerate %d: %v, refused want %v", tc.tolerate, err, tc.refused)
		}
	}
}

// TestAdmissionPending: a pending ha VM is placed by the pending loop only
// when admission allows it.
func TestAdmissionPending(t *testing.T) {
	w, p := newHAWorld(t, 1)
	w.register("", hv1ID, "hv1", 1)
	// One node cannot tolerate a failure: a create is refused outright.
	vm, err := w.ep.CreateVM(w.ctx, "", api.CreateVMRequest{Name: "big", VCPUs: 1, Memory: 4096, HA: true})
	if !refusedByAdmission(err) {
		t.Fatalf("create on one node: %v %+v, want refused", vm, err)
	}
	// A pending ha VM (as a create left it when no node had room).
	w.Propose(fsm.CmdCreateVM, fsm.CreateVM{VM: structs.VM{ID: "00000000-0000-4000-8000-0000000000aa", Name: "pend",
		DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 4096, HA: true}}})
	if n := p.PlacePending(w.ctx); n != 0 {
		t.Fatalf("pending loop placed %d with one node", n)
	}
	w.register("", hv2ID, "hv2", 2)
	if n := p.PlacePending(w.ctx); n != 1 || w.vm("pend").NodeID == "" {
		t.Fatalf("pending loop placed %d once a second node came", n)
	}
	// A VM a rebuild left pending (placed once: generation > 0) is being
	// moved, not admitted: placed although the reservation is broken.
	moved := "00000000-0000-4000-8000-0000000000bb"
	w.Propose(fsm.CmdCreateVM, fsm.CreateVM{VM: structs.VM{ID: moved, Name: "moved",
		DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 4096, HA: true}}, NodeID: hv1ID})
	w.Propose(fsm.CmdPlaceVM, fsm.PlaceVM{VMID: moved, NodeID: ""})
	filler := "00000000-0000-4000-8000-0000000000cc" // written past admission: breaks the reservation
	w.Propose(fsm.CmdCreateVM, fsm.CreateVM{VM: structs.VM{ID: filler, Name: "filler",
		DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 6144, HA: true}}, NodeID: hv2ID})
	if res, _ := p.Reservation(); res.OK {
		t.Fatalf("reservation holds: %s", res.Reason)
	}
	if n := p.PlacePending(w.ctx); n != 1 || w.vm("moved").NodeID == "" {
		t.Fatalf("pending loop placed %d: a moved ha VM must not wait for admission", n)
	}
	w.Propose(fsm.CmdDeleteVM, fsm.DeleteVM{VMID: moved})
	w.Propose(fsm.CmdDeleteVM, fsm.DeleteVM{VMID: filler})
	// The plan names the other node for it, safely.
	entries, res, err := p.FailoverPlan()
	if err != nil || len(entries) != 1 || !res.OK {
		t.Fatalf("plan %+v %+v %v", entries, res, err)
	}
	if e := entries[0]; !e.Safe || e.Target == "" || e.Target == e.NodeID {
		t.Fatalf("plan entry %+v", e)
	}
}
