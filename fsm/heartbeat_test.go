package fsm

import (
	"reflect"
	"slices"
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

// TestHeartbeatJudgesTheReturn: the servers gate the return (uniqueness
// rule 9) when the entry applies, against the state then. A node.heartbeat
// asking an unreachable node back to normal is refused unless its copy
// evidence names a desired index at least the node's (as it was before
// the entry), libvirt was listed and no stale copy runs; a node that runs
// one is never normal; its conflicts are recorded; an entry without
// evidence (written before the gate) applies its transition as given.
func TestHeartbeatJudgesTheReturn(t *testing.T) {
	normal := &MonitorTransition{State: structs.MonitorNormal, Reason: "heartbeat received"}
	tests := []struct {
		name        string
		unreachable bool
		// copies builds the evidence; cur is the node's desired index, old
		// the generation of the node's copy, gen the placement's (on a).
		copies        func(cur, old, gen uint64) *CopyEvidence
		wantState     string
		wantRefused   string // substring of return_refused ("" = none)
		wantConflicts []bool // per conflict: destroyed
		wantEvent     string // an event kind the entry records ("" = none checked)
	}{
		{"old entry without evidence: applies as given (replay)", true,
			func(cur, old, gen uint64) *CopyEvidence { return nil }, structs.MonitorNormal, "", nil, "node.normal"},
		{"clean evidence: returns", true,
			func(cur, old, gen uint64) *CopyEvidence { return &CopyEvidence{DesiredIndex: cur} }, structs.MonitorNormal, "", nil, "node.normal"},
		{"desired index behind the node's: refused", true,
			func(cur, old, gen uint64) *CopyEvidence { return &CopyEvidence{DesiredIndex: cur - 1} }, structs.MonitorUnreachable, "older than the node's", nil, "node.return_refused"},
		{"libvirt not listed: refused", true,
			func(cur, old, gen uint64) *CopyEvidence { return &CopyEvidence{DesiredIndex: cur, Unknown: true} }, structs.MonitorUnreachable, "libvirt could not be listed", nil, "node.return_refused"},
		{"stale copy running: refused, conflict", true,
			func(cur, old, gen uint64) *CopyEvidence {
				return &CopyEvidence{DesiredIndex: cur, Running: []Copy{{VMID: webID, Generation: old}}}
			}, structs.MonitorUnreachable, "runs a copy of vm web (generation", []bool{false}, "vm.uniqueness_conflict"},
		{"stale copy destroyed: returns, conflict recorded", true,
			func(cur, old, gen uint64) *CopyEvidence {
				return &CopyEvidence{DesiredIndex: cur, Destroyed: []Copy{{VMID: webID, Generation: old}}}
			}, structs.MonitorNormal, "", []bool{true}, "vm.uniqueness_conflict"},
		{"a copy with the placement's generation, on the wrong node: refused", true,
			func(cur, old, gen uint64) *CopyEvidence {
				return &CopyEvidence{DesiredIndex: cur, Running: []Copy{{VMID: webID, Generation: gen}}}
			}, structs.MonitorUnreachable, "runs a copy of vm web", []bool{false}, "vm.uniqueness_conflict"},
		{"normal node, stale copy running: error", false,
			func(cur, old, gen uint64) *CopyEvidence {
				return &CopyEvidence{DesiredIndex: cur, Running: []Copy{{VMID: webID, Generation: old}}}
			}, structs.MonitorError, "", []bool{false}, "node.error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			a, b := node("a"), node("b")
			for _, n := range []structs.Node{a, b} {
				h.must("", CmdRegisterNode, RegisterNode{Node: n})
			}
			web := vm("web")
			web.ID = webID
			old := h.must("", CmdCreateVM, CreateVM{VM: web, NodeID: b.ID}).Index
			if tt.unreachable {
				h.must("", CmdSetMonitor, SetMonitor{NodeID: b.ID, State: structs.MonitorUnreachable})
			}
			gen := h.must("", CmdPlaceVM, PlaceVM{VMID: webID, NodeID: a.ID, IfGeneration: old}).Index
			cur := h.f.NodeIndex(b.ID)
			events0 := h.f.LastEventSeq()
			h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Monitor: normal, Copies: tt.copies(cur, old, gen)})
			n, _ := h.f.Node(b.ID)
			if n.MonitorState != tt.wantState {
				t.Fatalf("state %s, want %s", n.MonitorState, tt.wantState)
			}
			if (tt.wantRefused == "") != (n.ReturnRefused == "") || !strings.Contains(n.ReturnRefused, tt.wantRefused) {
				t.Fatalf("return_refused %q, want %q", n.ReturnRefused, tt.wantRefused)
			}
			if len(n.StaleCopies) != len(tt.wantConflicts) {
				t.Fatalf("conflicts %+v, want %d", n.StaleCopies, len(tt.wantConflicts))
			}
			for i, destroyed := range tt.wantConflicts {
				c := n.StaleCopies[i]
				if c.VMID != webID || (c.Generation != old && c.Generation != gen) || c.PlacedOn != a.ID || c.PlacedGeneration != gen || c.Destroyed != destroyed {
					t.Fatalf("conflict %+v, want web generation %d on a generation %d, destroyed %v", c, old, gen, destroyed)
				}
			}
			if n.MonitorState == structs.MonitorError && !slices.Contains(n.Faults, structs.FaultStaleCopy) {
				t.Fatalf("error without fault %q: %v", structs.FaultStaleCopy, n.Faults)
			}
			if tt.wantEvent != "" {
				evs, _ := h.f.Events(events0, 100)
				if !slices.ContainsFunc(evs, func(e structs.Event) bool { return e.Kind == tt.wantEvent }) {
					t.Fatalf("events %+v, want one %s", evs, tt.wantEvent)
				}
			}
		})
	}
}

const webID = "0d7a3c55-1b2e-4f60-8a9d-3e4f5a6b7c8d"

// TestFenceMakesTheNodeUnreachable: an operator's fence, as a rebuild
// with --confirm-fenced records it (FenceUnreachable), takes the node as
// powered off: a node that is not unreachable becomes so, and returns
// only through the return gate. An entry written before the field
// existed sets the flag alone (replay).
func TestFenceMakesTheNodeUnreachable(t *testing.T) {
	yes := true
	tests := []struct {
		name      string
		flags     SetNodeFlags
		wantState string
	}{
		{"fence with FenceUnreachable: unreachable", SetNodeFlags{Fenced: &yes, FenceUnreachable: true}, structs.MonitorUnreachable},
		{"old entry, fence alone: monitor state kept", SetNodeFlags{Fenced: &yes}, structs.MonitorNormal},
		{"FenceUnreachable without a fence: nothing", SetNodeFlags{FenceUnreachable: true}, structs.MonitorNormal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			a := node("a")
			h.must("", CmdRegisterNode, RegisterNode{Node: a})
			tt.flags.NodeID = a.ID
			h.must("", CmdSetNodeFlags, tt.flags)
			n, _ := h.f.Node(a.ID)
			if n.MonitorState != tt.wantState {
				t.Fatalf("monitor state %s, want %s", n.MonitorState, tt.wantState)
			}
		})
	}
}
