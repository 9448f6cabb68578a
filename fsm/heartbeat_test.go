package fsm

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// TestHeartbeatAppliesItsWholeDelta: one node.heartbeat entry carries
// adoptions, observations, flags, local migrations and the monitor
// transition; each item is judged against the state as it applies, and a
// refused item is recorded without failing the command.
func TestHeartbeatAppliesItsWholeDelta(t *testing.T) {
	h := newHarness(t)
	a, b, c := node("a"), node("b"), node("c")
	for _, n := range []structs.Node{a, b, c} {
		h.must("", CmdRegisterNode, RegisterNode{Node: n})
	}
	onA, moved, stale := vm("on-a"), vm("moved"), vm("stale")
	genOnA := h.must("", CmdCreateVM, CreateVM{VM: onA, NodeID: a.ID}).Index
	genMoved := h.must("", CmdCreateVM, CreateVM{VM: moved, NodeID: a.ID}).Index
	genStale := h.must("", CmdCreateVM, CreateVM{VM: stale, NodeID: a.ID}).Index
	// stale is placed anew on c: a claim of its first generation is old.
	h.must("", CmdPlaceVM, PlaceVM{VMID: stale.ID, NodeID: c.ID, IfGeneration: genStale})
	events0 := h.f.LastEventSeq()

	yes, drainID := true, "drain-7"
	hb := Heartbeat{NodeID: b.ID,
		Adoptions: []Adoption{{VMID: moved.ID, Generation: genMoved}, {VMID: stale.ID, Generation: genStale}},
		Observations: []structs.VMObservation{
			{VMID: moved.ID, State: structs.StateRunning, Reason: "migrated", Generation: genMoved}, // current once adopted
			{VMID: onA.ID, State: structs.StateRunning, Reason: "booted", Generation: genOnA},       // placed on a: a stale copy
		},
		LocalDrained: &yes, LocalDrainID: &drainID,
		LocalMigrations: []structs.LocalMigration{{VMID: onA.ID, ToAddr: "10.0.0.9:4660", Generation: genOnA}},
		Monitor:         &MonitorTransition{State: structs.MonitorError, Faults: []string{"storage", "kernel"}, Reason: "agent reports faults"},
	}
	r := h.must("hb-1", CmdHeartbeat, hb)
	if r.Heartbeat == nil || !reflect.DeepEqual(r.Heartbeat.Adopted, []string{moved.ID}) || !reflect.DeepEqual(r.Heartbeat.Rejected, []string{stale.ID}) {
		t.Fatalf("outcome = %+v, want adopted [%s] rejected [%s]", r.Heartbeat, moved.ID, stale.ID)
	}

	got, _ := h.f.VM(moved.ID)
	if got.NodeID != b.ID || got.Generation != r.Index || got.AdoptGeneration != genMoved || got.State != structs.StateRunning {
		t.Fatalf("adopted vm: node %s gen %d adopt %d state %s; want node b, gen %d, adopt %d, running",
			got.NodeID, got.Generation, got.AdoptGeneration, got.State, r.Index, genMoved)
	}
	if got, _ := h.f.VM(onA.ID); got.NodeID != a.ID || got.Observed != nil || got.Generation != genOnA {
		t.Fatalf("a local migration report or a stale copy moved or observed the VM: %+v", got)
	}
	if got, _ := h.f.VM(stale.ID); got.NodeID != c.ID {
		t.Fatalf("refused adoption moved the VM to %s", got.NodeID)
	}
	task, err := h.f.Task(AdoptTaskID(stale.ID, genStale, b.ID))
	if err != nil || task.State != structs.TaskFailed || task.Kind != structs.TaskAdopt ||
		!strings.Contains(task.Error, "node b adopted vm "+stale.ID) || !strings.Contains(task.Error, "refused: vm stale: adoption of generation") {
		t.Fatalf("refused adoption task = %+v, %v", task, err)
	}
	n, _ := h.f.Node(b.ID)
	if n.MonitorState != structs.MonitorError || !reflect.DeepEqual(n.Faults, []string{"kernel", "storage"}) ||
		!n.LocalDrained || n.LocalDrainID != drainID || !n.StateSince.Equal(t0.Add(time.Duration(r.Index-1)*time.Second)) {
		t.Fatalf("node after heartbeat: %+v", n)
	}

	kinds := map[string]int{}
	ev, _ := h.f.Events(events0, 100)
	for _, e := range ev {
		if e.Index != r.Index {
			t.Fatalf("event %s at index %d, want every event of the heartbeat at %d", e.Kind, e.Index, r.Index)
		}
		kinds[e.Kind]++
	}
	want := map[string]int{"vm.adopted": 1, "task.failed": 1, "vm.running": 1, "vm.stale_copy": 1,
		"vm.local_migration": 1, "node.flags": 1, "node.error": 1}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}

	// The same claims again (the agent repeats them until it destroyed the
	// copy): nothing moves, the refusal is not recorded twice.
	events1 := h.f.LastEventSeq()
	r2 := h.must("hb-2", CmdHeartbeat, Heartbeat{NodeID: b.ID, Adoptions: hb.Adoptions})
	if !reflect.DeepEqual(r2.Heartbeat.Rejected, []string{stale.ID}) || len(r2.Heartbeat.Adopted) != 0 {
		t.Fatalf("repeated claims: outcome %+v", r2.Heartbeat)
	}
	if ev, _ := h.f.Events(events1, 100); len(ev) != 0 {
		t.Fatalf("repeated claims recorded %d events (first: %s)", len(ev), ev[0].Message)
	}
	if got, _ := h.f.VM(moved.ID); got.Generation != r.Index {
		t.Fatalf("a repeated adoption moved the placement again (generation %d → %d)", r.Index, got.Generation)
	}
}

// TestHeartbeatObservationDoesNotWakeTheAgent: like CmdObserve, a
// heartbeat's observations never touch the node's desired-state index.
func TestHeartbeatObservationDoesNotWakeTheAgent(t *testing.T) {
	h := newHarness(t)
	n := node("a")
	h.must("", CmdRegisterNode, RegisterNode{Node: n})
	v := vm("web")
	gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: n.ID}).Index
	before := h.f.NodeIndex(n.ID)
	h.must("", CmdHeartbeat, Heartbeat{NodeID: n.ID, Observations: []structs.VMObservation{{VMID: v.ID, State: structs.StateRunning, Generation: gen}},
		Monitor: &MonitorTransition{State: structs.MonitorNormal}})
	if got, _ := h.f.VM(v.ID); got.State != structs.StateRunning {
		t.Fatalf("state %s, want running", got.State)
	}
	if after := h.f.NodeIndex(n.ID); after != before {
		t.Fatalf("a heartbeat woke the node's desired-state watch (%d → %d)", before, after)
	}
}

// TestHeartbeatJudgesDrainEvidence: the drain flags of a heartbeat with
// evidence are judged at apply time against the node as it is then
// (uniqueness rule 6): a drain ack needs a drained node, a desired index
// at least the drain's and every domain stopped; a local drain needs every
// domain stopped; a running domain withdraws both. An entry without
// evidence (written before it existed) applies its flags as given.
func TestHeartbeatJudgesDrainEvidence(t *testing.T) {
	yes, no := true, false
	done, draining := structs.LocalDrainDone, structs.LocalDraining
	tests := []struct {
		name string
		// before: the node's flags set by an earlier heartbeat without
		// evidence (as old entries do), then drained or not.
		before    Heartbeat
		drain     bool
		hb        func(drainIndex uint64) Heartbeat
		wantAck   bool
		wantLocal bool
		wantState string
	}{
		{"ack at the drain's index, all stopped: counted", Heartbeat{}, true,
			func(di uint64) Heartbeat {
				return Heartbeat{DrainAcked: &yes, Evidence: &DrainEvidence{DesiredIndex: di}}
			}, true, false, ""},
		{"ack from a desired index older than the drain: refused", Heartbeat{}, true,
			func(di uint64) Heartbeat {
				return Heartbeat{DrainAcked: &yes, Evidence: &DrainEvidence{DesiredIndex: di - 1}}
			}, false, false, ""},
		{"ack while a domain runs: refused", Heartbeat{}, true,
			func(di uint64) Heartbeat {
				return Heartbeat{DrainAcked: &yes, Evidence: &DrainEvidence{DesiredIndex: di, Running: true}}
			}, false, false, ""},
		{"ack with libvirt unlisted: refused", Heartbeat{}, true,
			func(di uint64) Heartbeat {
				return Heartbeat{DrainAcked: &yes, Evidence: &DrainEvidence{DesiredIndex: di, Unknown: true}}
			}, false, false, ""},
		{"ack of a node no longer drained: refused", Heartbeat{}, false,
			func(di uint64) Heartbeat {
				return Heartbeat{DrainAcked: &yes, Evidence: &DrainEvidence{DesiredIndex: 1 << 40}}
			}, false, false, ""},
		{"local drain with a domain running: draining, not drained", Heartbeat{}, false,
			func(uint64) Heartbeat {
				return Heartbeat{LocalDrained: &yes, LocalDrainState: &done, Evidence: &DrainEvidence{Running: true}}
			}, false, false, draining},
		{"local drain, all stopped: drained", Heartbeat{}, false,
			func(uint64) Heartbeat {
				return Heartbeat{LocalDrained: &yes, LocalDrainState: &done, Evidence: &DrainEvidence{}}
			}, false, true, done},
		{"running domain withdraws an ack and a local drain", Heartbeat{LocalDrained: &yes, LocalDrainState: &done}, true,
			func(di uint64) Heartbeat { return Heartbeat{Evidence: &DrainEvidence{DesiredIndex: di, Running: true}} }, false, false, draining},
		{"entry without evidence: flags as given (old logs replay)", Heartbeat{}, true,
			func(uint64) Heartbeat { return Heartbeat{DrainAcked: &yes, LocalDrained: &yes} }, true, true, ""},
		{"explicit withdrawal applies", Heartbeat{LocalDrained: &yes}, false,
			func(uint64) Heartbeat { return Heartbeat{LocalDrained: &no, Evidence: &DrainEvidence{}} }, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			n := node("a")
			h.must("", CmdRegisterNode, RegisterNode{Node: n})
			before := tt.before
			before.NodeID = n.ID
			h.must("", CmdHeartbeat, before)
			var di uint64
			if tt.drain {
				di = h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeDrained}).Index
				if got, _ := h.f.Node(n.ID); got.DrainIndex != di {
					t.Fatalf("drain_index %d, want the drain's index %d", got.DrainIndex, di)
				}
				if tt.before.LocalDrained != nil { // a case with earlier flags starts acknowledged too
					h.must("", CmdHeartbeat, Heartbeat{NodeID: n.ID, DrainAcked: &yes, Evidence: &DrainEvidence{DesiredIndex: di}})
					if got, _ := h.f.Node(n.ID); !got.DrainAcked {
						t.Fatal("setup: the drain was not acknowledged")
					}
				}
			}
			hb := tt.hb(di)
			hb.NodeID = n.ID
			h.must("", CmdHeartbeat, hb)
			got, err := h.f.Node(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.DrainAcked != tt.wantAck || got.LocalDrained != tt.wantLocal || got.LocalDrainState != tt.wantState {
				t.Fatalf("drain_acked %v local_drained %v local_drain_state %q, want %v %v %q",
					got.DrainAcked, got.LocalDrained, got.LocalDrainState, tt.wantAck, tt.wantLocal, tt.wantState)
			}
		})
	}
}
