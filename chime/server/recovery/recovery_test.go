package recovery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/server/hapolicy"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

// world is a real FSM (fsmtest), the real heartbeat monitor (the leader's
// memory of arrivals) and the real placer, with the duty under test. Only
// the fence command is the test's: it is an external executable.
type world struct {
	*fsmtest.World
	t       *testing.T
	monitor *heartbeat.Monitor
	placer  *placement.Placer
	fencer  *testFencer
	guard   *hapolicy.Guard // the real brake: the server passes its guard
	rec     *Recoverer
}

type testFencer struct {
	fails int // the next this many runs fail
	runs  []string
}

func (f *testFencer) Fence(_ context.Context, n structs.Node) (string, error) {
	f.runs = append(f.runs, n.Name)
	if f.fails > 0 {
		f.fails--
		return "bmc: no route to host", errors.New("exit status 1")
	}
	return "power off", nil
}

func newWorld(t *testing.T, withFencer bool) *world {
	t.Helper()
	fx := fsmtest.New(t)
	w := &world{World: fx, t: t}
	w.monitor = heartbeat.New(heartbeat.Config{Interval: time.Second, Missed: 3, Proposer: fx.Direct, State: fx.FSM, Clock: fx.Clock})
	w.monitor.Reset() // this server's takeover
	w.placer = placement.New(placement.Config{State: fx.FSM, Proposer: fx.Direct})
	w.guard = hapolicy.New(hapolicy.Config{State: fx.FSM, Proposer: fx.Direct, Reserver: w.placer})
	cfg := Config{Proposer: fx.Direct, State: fx.FSM, Silence: w.monitor, Placer: w.placer, Brake: w.guard, Clock: fx.Clock, MaxRestarts: 3, MaxFenceAttempts: 3}
	if withFencer {
		w.fencer = &testFencer{}
		cfg.Fencer = w.fencer
	}
	w.rec = New(cfg)
	return w
}

// node registers a node with the given isolation response and lease.
func (w *world) node(name, response string, lease time.Duration) string {
	w.t.Helper()
	id := uuid.NewString()
	w.Propose(fsm.CmdRegisterNode, fsm.RegisterNode{Node: structs.Node{ID: id, Name: name, VCPUs: fsmtest.NodeVCPUs,
		MemoryMiB: fsmtest.NodeMemoryMiB, IsolationResponse: response, IsolationLease: lease}})
	w.monitor.Registered(id)
	return id
}

func (w *world) vm(name string, ha bool, prio, nodeID string) string {
	w.t.Helper()
	vm := structs.VM{ID: uuid.NewString(), Name: name, DesiredState: structs.DesiredRunning,
		Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 512, HA: ha, Priority: prio}}
	w.CreateVM(vm, nodeID)
	return vm.ID
}

func (w *world) unreachable(nodeID string) {
	w.t.Helper()
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: nodeID, State: structs.MonitorUnreachable, Reason: "test"})
}

func (w *world) step() {
	w.t.Helper()
	if err := w.rec.Step(context.Background()); err != nil {
		w.t.Fatalf("step: %v", err)
	}
}

// events returns the event log's kinds with their VM names, for kinds
// with the given prefix.
func (w *world) events(prefix string) []structs.Event {
	w.t.Helper()
	evs, err := w.FSM.Events(0, 1000)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []structs.Event
	for _, e := range evs {
		if strings.HasPrefix(e.Kind, prefix) {
			out = append(out, e)
		}
	}
	return out
}

func TestLeaseExpiryRestartsHAVMsInPriorityOrder(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationStop, 10*time.Second)
	healthy := w.node("healthy", structs.IsolationKeep, 0)
	low := w.vm("low", true, structs.PriorityLow, dead)
	high := w.vm("high", true, structs.PriorityHigh, dead)
	med := w.vm("med", true, "", dead)
	plain := w.vm("plain", false, "", dead)
	w.unreachable(dead)

	// lease 10 s: the deadline is 10 × 1.5 + 10 = 25 s of silence.
	w.Clock.Advance(24 * time.Second)
	w.step()
	for _, id := range []string{low, high, med, plain} {
		if got := w.VM(id).NodeID; got != dead {
			t.Fatalf("vm moved before the lease deadline: on %s", got)
		}
	}
	w.Clock.Advance(2 * time.Second)
	w.step()
	for _, id := range []string{low, high, med} {
		if got := w.VM(id).NodeID; got != healthy {
			t.Errorf("ha vm %s on %q after the deadline, want the healthy node", w.VM(id).Name, got)
		}
	}
	if got := w.VM(plain).NodeID; got != dead {
		t.Errorf("the vm without ha moved to %q: only ha VMs restart automatically", got)
	}
	var order []string
	for _, e := range w.events(EventRestarted) {
		order = append(order, w.VM(e.VMID).Name)
		if !strings.Contains(e.Message, "isolation lease expired") {
			t.Errorf("ha.restarted does not name the lease: %s", e.Message)
		}
	}
	if strings.Join(order, ",") != "high,med,low" {
		t.Errorf("restart order %v, want high, med, low", order)
	}
}

func TestHeartbeatsRestartTheLeaseClock(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("slow", structs.IsolationStop, 10*time.Second)
	w.node("healthy", structs.IsolationKeep, 0)
	vm := w.vm("a", true, "", dead)
	w.unreachable(dead)
	w.Clock.Advance(20 * time.Second)
	w.monitor.Registered(dead) // a sign of life 20 s in
	w.Clock.Advance(20 * time.Second)
	w.step()
	if got := w.VM(vm).NodeID; got != dead {
		t.Fatalf("restarted 20 s after the last sign of life (deadline 25 s)")
	}
	w.Clock.Advance(6 * time.Second)
	w.step()
	if got := w.VM(vm).NodeID; got == dead {
		t.Fatalf("not restarted 26 s after the last sign of life")
	}
}

func TestNewLeaderCountsFromItsTakeover(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationStop, 10*time.Second)
	w.node("healthy", structs.IsolationKeep, 0)
	vm := w.vm("a", true, "", dead)
	w.unreachable(dead)
	w.Clock.Advance(time.Minute) // silent for a minute under the old leader
	// A new leader: it does not know when the last heartbeat arrived.
	w.monitor.Reset()
	w.Clock.Advance(24 * time.Second)
	w.step()
	if got := w.VM(vm).NodeID; got != dead {
		t.Fatalf("the new leader restarted 24 s after its takeover (deadline 25 s)")
	}
	w.Clock.Advance(2 * time.Second)
	w.step()
	if got := w.VM(vm).NodeID; got == dead {
		t.Fatalf("the new leader did not restart 26 s after its takeover")
	}
}

func TestKeepNodeWithoutFenceIsNeverRestarted(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationKeep, 0)
	w.node("healthy", structs.IsolationKeep, 0)
	vm := w.vm("a", true, "", dead)
	w.unreachable(dead)
	w.Clock.Advance(time.Hour)
	w.step()
	if got := w.VM(vm).NodeID; got != dead {
		t.Fatalf("a keep node's vm restarted without evidence")
	}
}

func TestFenceCommand(t *testing.T) {
	tests := []struct {
		name      string
		fails     int
		wantRuns  int
		restarted bool
		kinds     []string
	}{
		{name: "succeeds", fails: 0, wantRuns: 1, restarted: true, kinds: []string{EventFenceOK}},
		{name: "fails then succeeds", fails: 2, wantRuns: 3, restarted: true, kinds: []string{EventFenceFailed, EventFenceFailed, EventFenceOK}},
		{name: "always fails", fails: 100, wantRuns: 3, restarted: false, kinds: []string{EventFenceFailed, EventFenceFailed, EventFenceFailed, EventFenceGaveUp}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, true)
			w.fencer.fails = tc.fails
			dead := w.node("dead", structs.IsolationKeep, 0)
			w.node("healthy", structs.IsolationKeep, 0)
			vm := w.vm("a", true, "", dead)
			w.unreachable(dead)
			for range 120 { // two minutes of steps: every back-off passes
				w.step()
				w.Clock.Advance(time.Second)
			}
			if len(w.fencer.runs) != tc.wantRuns {
				t.Errorf("fence command ran %d times, want %d", len(w.fencer.runs), tc.wantRuns)
			}
			var kinds []string
			for _, e := range w.events("fence.") {
				kinds = append(kinds, e.Kind)
			}
			if strings.Join(kinds, " ") != strings.Join(tc.kinds, " ") {
				t.Errorf("fence events %v, want %v", kinds, tc.kinds)
			}
			moved := w.VM(vm).NodeID != dead
			if moved != tc.restarted {
				t.Fatalf("restarted = %v, want %v", moved, tc.restarted)
			}
			if moved {
				n := w.Node(dead)
				if !n.Fenced || n.FencedAt.IsZero() {
					t.Errorf("node not recorded fenced: %+v", n)
				}
				ev := w.events(EventRestarted)
				if len(ev) != 1 || !strings.Contains(ev[0].Message, "fence command succeeded") {
					t.Errorf("ha.restarted events %v: want one naming the fence", ev)
				}
			}
		})
	}
}

func TestFenceEvidenceVoidOnceTheNodeSpoke(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationKeep, 0)
	w.node("healthy", structs.IsolationKeep, 0)
	// A fence recorded, then a heartbeat: the node may run VMs again.
	w.unreachable(dead)
	w.Propose(fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: dead, FencedBy: "test", FenceUnreachable: true})
	w.Clock.Advance(5 * time.Second)
	w.monitor.Registered(dead)
	vm := w.vm("a", true, "", dead)
	w.Clock.Advance(time.Second)
	w.step()
	if got := w.VM(vm).NodeID; got != dead {
		t.Fatalf("restarted on a fence older than the node's last heartbeat")
	}
}

func TestHeartbeatRefusedWhileRecovering(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationStop, 10*time.Second)
	w.Clock.Advance(30 * time.Second)
	release, ok := w.monitor.HoldSilent(dead, 25*time.Second)
	if !ok {
		t.Fatal("no hold on a node silent for 30 s")
	}
	n := w.Node(dead)
	if _, err := w.monitor.Heartbeat(context.Background(), n, heartbeat.Report{}); !errors.Is(err, structs.ErrConflict) {
		t.Fatalf("heartbeat during the hold: %v, want a conflict", err)
	}
	if s := w.monitor.Silence(dead); s < 30*time.Second {
		t.Fatalf("the refused heartbeat counted as an arrival (silence %s)", s)
	}
	release()
	if _, err := w.monitor.Heartbeat(context.Background(), n, heartbeat.Report{}); err != nil {
		t.Fatalf("heartbeat after the hold: %v", err)
	}
	if _, ok := w.monitor.HoldSilent(dead, 25*time.Second); ok {
		t.Fatal("hold granted on a node that just spoke")
	}
}

// TestBrake: the recovery duty acts only while the real guard
// (hapolicy.Guard, over the same FSM) says automatic HA is armed: not while
// an operator disarmed it, not while more than half the nodes are
// unreachable (the brake, latched or not); an arm that acknowledges the
// unreachable nodes lets it restart.
func TestBrake(t *testing.T) {
	cases := []struct {
		name     string
		disarm   bool
		deadN    int // unreachable nodes, each with one ha VM
		arm      bool
		wantMove bool
	}{
		{"armed, one of three nodes dead", false, 1, false, true},
		{"disarmed by an operator", true, 1, false, false},
		{"disarmed, then armed", true, 1, true, true},
		{"brake: two of three nodes dead", false, 2, false, false},
		{"brake released by an arm", false, 2, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, true)
			var dead, vms []string
			for i := range tc.deadN {
				n := w.node(fmt.Sprintf("dead%d", i), structs.IsolationStop, 10*time.Second)
				dead = append(dead, n)
				vms = append(vms, w.vm(fmt.Sprintf("vm%d", i), true, "", n))
			}
			for i := tc.deadN; i < 3; i++ {
				w.node(fmt.Sprintf("healthy%d", i), structs.IsolationKeep, 0)
			}
			if tc.disarm {
				w.Propose(fsm.CmdSetHAArmed, fsm.SetHAArmed{Armed: false, Reason: "test"})
			}
			for _, n := range dead {
				w.unreachable(n)
			}
			if err := w.guard.Step(context.Background()); err != nil { // latches the brake if due
				t.Fatal(err)
			}
			w.Clock.Advance(time.Minute)
			w.step()
			if tc.arm {
				if armed, why := w.guard.Armed(); armed {
					t.Fatalf("armed before the arm: %s", why)
				}
				if _, err := w.guard.SetArmed(context.Background(), "", true, "test"); err != nil {
					t.Fatal(err)
				}
				w.step()
			}
			moved := 0
			for i, vm := range vms {
				if w.VM(vm).NodeID != dead[i] {
					moved++
				}
			}
			if tc.wantMove && moved != len(vms) || !tc.wantMove && (moved != 0 || len(w.fencer.runs) != 0) {
				armed, why := w.guard.Armed()
				t.Fatalf("moved %d of %d, fence runs %d (guard armed %v: %s)", moved, len(vms), len(w.fencer.runs), armed, why)
			}
		})
	}
}

func TestNoCapacityBacksOffThenGivesUp(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationStop, 10*time.Second)
	// A disabled node: counted by the brake (one of two unreachable is
	// not more than half), but it takes no VMs, so there is nowhere to go.
	off := w.node("disabled", structs.IsolationKeep, 0)
	w.Propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: off, State: structs.NodeDisabled})
	vm := w.vm("a", true, "", dead)
	w.unreachable(dead)
	w.Clock.Advance(26 * time.Second)
	for range 300 {
		w.step()
		w.Clock.Advance(time.Second)
	}
	if w.VM(vm).NodeID != dead {
		t.Fatal("moved with no node to go to")
	}
	if got := w.events(EventGaveUp); len(got) != 1 {
		t.Fatalf("ha.gave_up events: %d, want 1 (after MaxRestarts attempts)", len(got))
	}
	// A node appears: the VM is given up for this placement until its node changes.
	w.node("late", structs.IsolationKeep, 0)
	w.step()
	if w.VM(vm).NodeID != dead {
		t.Fatal("a given-up VM was restarted")
	}
}

func TestDrainAcknowledgedIsEvidence(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationKeep, 0)
	healthy := w.node("healthy", structs.IsolationKeep, 0)
	vm := w.vm("a", true, "", dead)
	w.Propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: dead, State: structs.NodeDrained})
	yes := true
	w.Propose(fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: dead, DrainAcked: &yes})
	w.unreachable(dead)
	w.step()
	if got := w.VM(vm).NodeID; got != healthy {
		t.Fatalf("a drained, acknowledged node's ha vm is on %q, want the healthy node", got)
	}
	if ev := w.events(EventRestarted); len(ev) != 1 || !strings.Contains(ev[0].Message, "drain acknowledged") {
		t.Fatalf("ha.restarted: %v", ev)
	}
}

// The lease covers a VM that arrived by live migration only once the node
// reported it at its placement's generation.
func TestLeaseCoversMigratedVMsOnlyOnceReported(t *testing.T) {
	n := structs.Node{ID: "n"}
	tests := []struct {
		name    string
		vm      structs.VM
		covered bool
	}{
		{"placed, never migrated", structs.VM{ID: "a", Generation: 10}, true},
		{"migrated here, only the source's report", structs.VM{ID: "b", Generation: 20, AdoptGeneration: 10,
			Observed: &structs.Observation{NodeID: "n", Generation: 10, Reason: "migrated"}}, false},
		{"migrated here, no observation", structs.VM{ID: "c", Generation: 20, AdoptGeneration: 10}, false},
		{"migrated here, reported by the node at its generation", structs.VM{ID: "d", Generation: 20, AdoptGeneration: 10,
			Observed: &structs.Observation{NodeID: "n", Generation: 20}}, true},
		{"migrated here, observed elsewhere", structs.VM{ID: "e", Generation: 20, AdoptGeneration: 10,
			Observed: &structs.Observation{NodeID: "m", Generation: 20}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cov, _ := leaseCovers(n, []structs.VM{tc.vm})
			if got := len(cov) == 1; got != tc.covered {
				t.Fatalf("covered = %v, want %v", got, tc.covered)
			}
		})
	}
}

// The margin decides the lease's deadline (lease × 1.5 + margin), and a
// node whose agent may need longer to stop its VMs than the margin (its
// registered stop bound) gets no lease evidence at all.
func TestLeaseMarginAndStopBound(t *testing.T) {
	for _, tc := range []struct {
		name      string
		margin    time.Duration // 0: the default (10 s)
		bound     time.Duration // the agent's registered stop bound (0: an older agent)
		lease     time.Duration
		notBefore time.Duration // still in place after this much silence
		movedBy   time.Duration // restarted elsewhere after this much (0: never)
	}{
		{"default margin, older agent", 0, 0, 5 * time.Second, 17 * time.Second, 18 * time.Second},
		{"margin 1s, bound 1s", time.Second, time.Second, 5 * time.Second, 8 * time.Second, 9 * time.Second},
		{"margin 1s, bound 400ms", time.Second, 400 * time.Millisecond, 5 * time.Second, 8 * time.Second, 9 * time.Second},
		{"margin 1s, bound 2s: not counted", time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Minute, 0},
		{"margin 1s, older agent: not counted", time.Second, 0, 5 * time.Second, 10 * time.Minute, 0},
		{"margin 30s, bound 10s", 30 * time.Second, 10 * time.Second, 20 * time.Second, 59 * time.Second, 61 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, false)
			w.rec = New(Config{Proposer: w.Direct, State: w.FSM, Silence: w.monitor, Placer: w.placer, Brake: w.guard,
				Clock: w.Clock, LeaseMargin: tc.margin})
			id := uuid.NewString()
			w.Propose(fsm.CmdRegisterNode, fsm.RegisterNode{Node: structs.Node{ID: id, Name: "dead", VCPUs: fsmtest.NodeVCPUs,
				MemoryMiB: fsmtest.NodeMemoryMiB, IsolationResponse: structs.IsolationStop, IsolationLease: tc.lease,
				IsolationStopBound: tc.bound}})
			w.monitor.Registered(id)
			w.node("healthy", structs.IsolationKeep, 0)
			vm := w.vm("a", true, "", id)
			w.unreachable(id)
			w.Clock.Advance(tc.notBefore)
			w.step()
			if got := w.VM(vm).NodeID; got != id {
				t.Fatalf("restarted after %s of silence", tc.notBefore)
			}
			if tc.movedBy == 0 {
				return
			}
			w.Clock.Advance(tc.movedBy - tc.notBefore)
			w.step()
			if got := w.VM(vm).NodeID; got == id {
				t.Fatalf("not restarted after %s of silence", tc.movedBy)
			}
			evs := w.events(EventRestarted)
			if len(evs) != 1 || !strings.Contains(evs[0].Message, "margin") {
				t.Errorf("ha.restarted events %v: want one that names the margin", evs)
			}
			t.Logf("%s", evs[0].Message)
		})
	}
}

// The restart attempts are replicated: a new leader (a new Recoverer on
// the same state, its monitor reset at its takeover) goes on counting
// toward MaxRestarts (3 here) instead of starting again, and waits the
// whole back-off from its takeover.
func TestRestartAttemptsSurviveALeaderChange(t *testing.T) {
	w := newWorld(t, false)
	dead := w.node("dead", structs.IsolationStop, 10*time.Second)
	off := w.node("disabled", structs.IsolationKeep, 0)
	w.Propose(fsm.CmdSetManagement, fsm.SetManagement{NodeID: off, State: structs.NodeDisabled})
	vm := w.vm("a", true, "", dead)
	w.unreachable(dead)
	w.Clock.Advance(26 * time.Second)
	for w.VM(vm).HARestarts == nil || w.VM(vm).HARestarts.Count < 2 {
		w.step()
		w.Clock.Advance(time.Second)
	}
	if got := w.events("ha.restart_failed"); len(got) != 2 {
		t.Fatalf("ha.restart_failed events: %d, want 2", len(got))
	}
	// The leader changes.
	w.monitor.Reset()
	w.rec = New(Config{Proposer: w.Direct, State: w.FSM, Silence: w.monitor, Placer: w.placer, Brake: w.guard,
		Clock: w.Clock, MaxRestarts: 3})
	w.Clock.Advance(26 * time.Second) // the lease deadline from the takeover
	w.step()
	if got := w.VM(vm).HARestarts.Count; got != 2 {
		t.Fatalf("the new leader tried at once (count %d): it waits the back-off from its takeover", got)
	}
	for range 120 {
		w.step()
		w.Clock.Advance(time.Second)
	}
	h := w.VM(vm).HARestarts
	if h.Count != 3 || !h.GaveUp {
		t.Fatalf("retry state %+v, want 3 attempts in all and given up", *h)
	}
	gave := w.events(EventGaveUp)
	if len(gave) != 1 || !strings.Contains(gave[0].Message, "after 3 attempts") {
		t.Fatalf("ha.gave_up events %v: want one, after 3 attempts in all", gave)
	}
	if got := w.events("ha.restart_failed"); len(got) != 3 {
		t.Errorf("ha.restart_failed events: %d, want 3", len(got))
	}
	// A placement move clears it.
	late := w.node("late", structs.IsolationKeep, 0)
	w.Propose(fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm, NodeID: late})
	if w.VM(vm).HARestarts != nil {
		t.Errorf("retry state %+v kept after a placement move", *w.VM(vm).HARestarts)
	}
}

// A held live migration (outcome unknown) from or to a node that is then
// fenced is settled by automatic HA at the other end, ha VMs only: the
// fence proves that the fenced end runs nothing. The isolation lease does
// not settle it (a hand-over libvirt completed is not the agent's to kill).
func TestFenceSettlesHeldMigrations(t *testing.T) {
	for _, tc := range []struct {
		name       string
		fencedEnd  string // "source" or "destination"
		ha         bool
		fence      bool // a fence command (else: lease only)
		wantOn     string
		wantSettle bool
	}{
		{"source fenced: placed on the destination", "source", true, true, "dst", true},
		{"destination fenced: stays on the source", "destination", true, true, "src", true},
		{"not ha: left to the operator", "source", false, true, "src", false},
		{"lease only: waits for a fence", "source", true, false, "src", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.fence)
			src := w.node("src", structs.IsolationStop, 5*time.Second)
			dst := w.node("dst", structs.IsolationStop, 5*time.Second)
			w.node("spare", structs.IsolationKeep, 0)
			w.node("spare2", structs.IsolationKeep, 0) // two of four unreachable: the brake holds off
			vm := w.vm("a", tc.ha, "", src)
			gen := w.VM(vm).Generation
			w.Propose(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: vm, TaskID: "t1", To: dst, IfGeneration: gen})
			w.Propose(fsm.CmdMigrationEnd, fsm.MigrationEnd{VMID: vm, TaskID: "t1", FromNode: src, Generation: gen, Unknown: true, Error: "reply lost"})
			if !w.VM(vm).Held() {
				t.Fatal("not held")
			}
			lost := src
			if tc.fencedEnd == "destination" {
				lost = dst
			}
			w.unreachable(lost)
			for range 30 {
				w.step()
				w.Clock.Advance(time.Second)
			}
			got := w.VM(vm)
			if got.Held() == tc.wantSettle {
				t.Fatalf("held %v, want settled %v", got.Held(), tc.wantSettle)
			}
			on := map[string]string{src: "src", dst: "dst"}[got.NodeID]
			if on != tc.wantOn {
				t.Errorf("placed on %q, want %s", on, tc.wantOn)
			}
			if tc.fence && tc.ha && len(w.fencer.runs) == 0 {
				t.Errorf("no fence run for the held VM's node")
			}
		})
	}
}
