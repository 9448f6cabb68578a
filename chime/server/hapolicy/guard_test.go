package hapolicy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/server/hapolicy"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

type world struct {
	*fsmtest.World
	guard  *hapolicy.Guard
	placer *placement.Placer
	nodes  []string
}

func newWorld(t *testing.T, nodes int) *world {
	w := &world{World: fsmtest.New(t)}
	w.placer = placement.New(placement.Config{State: w.FSM, Proposer: w.Direct, HATolerate: 1})
	w.guard = hapolicy.New(hapolicy.Config{State: w.FSM, Proposer: w.Direct, Reserver: w.placer})
	for _, name := range []string{"a", "b", "c", "d", "e"}[:nodes] {
		w.nodes = append(w.nodes, w.RegisterNode(name))
	}
	return w
}

func (w *world) setMonitor(t *testing.T, i int, state string) {
	t.Helper()
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: w.nodes[i], State: state})
}

func (w *world) step(t *testing.T) {
	t.Helper()
	if err := w.guard.Step(context.Background()); err != nil {
		t.Fatalf("guard step: %v", err)
	}
}

func (w *world) events(kind string) int {
	evs, _ := w.FSM.Events(0, 1000)
	n := 0
	for _, e := range evs {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// TestGuardBrake: a mass partition latches the brake, the return of one
// node keeps it, an operator's arm releases it and acknowledges the
// failure, and a further failure engages it again.
func TestGuardBrake(t *testing.T) {
	w := newWorld(t, 5)
	ctx := context.Background()
	w.step(t)
	if ok, why := w.guard.Armed(); !ok {
		t.Fatalf("healthy cluster disarmed: %s", why)
	}
	for i := range 3 {
		w.setMonitor(t, i, structs.MonitorUnreachable)
	}
	// Before the guard records anything, Armed already refuses.
	if ok, why := w.guard.Armed(); ok || w.guard.HAArmed() || !strings.Contains(why, "3 of 5") {
		t.Fatalf("mass failure not seen before the latch: %v %s", ok, why)
	}
	w.step(t)
	w.step(t) // idempotent: one event
	if ha, _ := w.FSM.HA(); !ha.Brake || ha.BrakeUnreachable != 3 || w.events("ha.brake_engaged") != 1 {
		t.Fatalf("brake %+v, %d engaged events", ha, w.events("ha.brake_engaged"))
	}
	w.setMonitor(t, 0, structs.MonitorNormal) // 2 of 5: inside the band
	w.step(t)
	if ok, why := w.guard.Armed(); ok || !strings.Contains(why, "brake is engaged") {
		t.Fatalf("brake released inside the band: %s", why)
	}
	st, err := w.guard.SetArmed(ctx, "", true, "racks 1 and 2 are powered off")
	if err != nil || !st.Armed || st.Switch.AckUnreachable != 2 || st.Switch.BrakeReleaseCause != "operator arm" {
		t.Fatalf("arm: %+v %v", st, err)
	}
	w.step(t)
	if ha, _ := w.FSM.HA(); ha.Brake {
		t.Fatalf("brake engaged again after the arm: %+v", ha)
	}
	w.setMonitor(t, 0, structs.MonitorUnreachable) // 3 of 5 > acknowledged 2
	w.step(t)
	if ok, _ := w.guard.Armed(); ok || w.events("ha.brake_engaged") != 2 {
		t.Fatalf("a further failure did not engage the brake again")
	}
	for i := range 3 {
		w.setMonitor(t, i, structs.MonitorNormal)
	}
	w.step(t)
	if ha, _ := w.FSM.HA(); ha.Brake || ha.AckUnreachable != 0 || ha.BrakeReleaseCause != "nodes returned" {
		t.Fatalf("brake after every node returned: %+v", ha)
	}
	if ok, why := w.guard.Armed(); !ok {
		t.Fatalf("disarmed after recovery: %s", why)
	}
	// Disarm for maintenance: replicated, shown, and only an arm ends it.
	if st, err := w.guard.SetArmed(ctx, "", false, "kernel upgrades"); err != nil || st.Armed || !strings.Contains(st.Reason, "kernel upgrades") {
		t.Fatalf("disarm: %+v %v", st, err)
	}
	w.step(t)
	if ok, _ := w.guard.Armed(); ok {
		t.Fatal("armed after a disarm")
	}
}

// TestGuardAlarms: the alarmer records HAReservationBroken and
// HABrakeEngaged through its Extra hook, and resolves them.
func TestGuardAlarms(t *testing.T) {
	w := newWorld(t, 2)
	al := alarms.New(alarms.Config{State: w.FSM, Proposer: w.Direct, Clock: w.Clock, Extra: w.guard.Alarms})
	ctx := context.Background()
	firing := func() map[string]bool {
		t.Helper()
		if err := al.Step(ctx); err != nil {
			t.Fatalf("alarm step: %v", err)
		}
		list, err := al.Firing()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, a := range list {
			out[a.Name] = true
		}
		return out
	}
	// Two 8 GiB nodes; 6 GiB of ha VMs on each: no node can take the other's.
	for i, id := range w.nodes {
		w.CreateVM(structs.VM{ID: "vm-" + id, Name: []string{"web", "db"}[i], DesiredState: structs.DesiredRunning,
			Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 6144, HA: true}}, id)
	}
	if got := firing(); !got["HAReservationBroken"] || got["HABrakeEngaged"] {
		t.Fatalf("firing %v, want HAReservationBroken only", got)
	}
	w.Propose(fsm.CmdDeleteVM, fsm.DeleteVM{VMID: "vm-" + w.nodes[1]})
	if got := firing(); got["HAReservationBroken"] {
		t.Fatalf("firing %v after the delete", got)
	}
	w.setMonitor(t, 0, structs.MonitorUnreachable)
	w.setMonitor(t, 1, structs.MonitorUnreachable)
	w.step(t)
	if got := firing(); !got["HABrakeEngaged"] || !got["HAReservationBroken"] {
		t.Fatalf("firing %v, want the brake and the reservation (every node is down)", got)
	}
}
