package fsm

import (
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
)

// TestHASwitch walks the automatic-HA switch through operator and brake
// commands; each step states the switch it must leave and the event it
// must append ("" for none).
func TestHASwitch(t *testing.T) {
	h := newHarness(t)
	if s, err := h.f.HA(); err != nil || s.Disarmed || s.Brake {
		t.Fatalf("a fresh FSM: %+v %v, want armed with the brake released", s, err)
	}
	steps := []struct {
		name         string
		typ          CommandType
		payload      any
		wantDisarmed bool
		wantBrake    bool
		wantAck      int
		wantEvent    string
	}{
		{"disarm", CmdSetHAArmed, SetHAArmed{Reason: "rack maintenance"}, true, false, 0, "ha.disarmed"},
		{"disarm again keeps the first", CmdSetHAArmed, SetHAArmed{Reason: "other"}, true, false, 0, ""},
		{"brake engages while disarmed", CmdSetHABrake, SetHABrake{Engaged: true, Unreachable: 3, Nodes: 4}, true, true, 0, "ha.brake_engaged"},
		{"brake engage is idempotent", CmdSetHABrake, SetHABrake{Engaged: true, Unreachable: 4, Nodes: 4}, true, true, 0, ""},
		{"arm releases the brake and acknowledges", CmdSetHAArmed, SetHAArmed{Armed: true, AckUnreachable: 3}, false, false, 3, "ha.armed"},
		{"arm when armed is quiet", CmdSetHAArmed, SetHAArmed{Armed: true, AckUnreachable: 3}, false, false, 3, ""},
		{"ack reset by the leader", CmdSetHABrake, SetHABrake{ResetAck: true}, false, false, 0, ""},
		{"brake engages", CmdSetHABrake, SetHABrake{Engaged: true, Unreachable: 3, Nodes: 5}, false, true, 0, "ha.brake_engaged"},
		{"brake releases", CmdSetHABrake, SetHABrake{Unreachable: 1, Nodes: 5}, false, false, 0, "ha.brake_released"},
		{"release is idempotent", CmdSetHABrake, SetHABrake{Unreachable: 0, Nodes: 5}, false, false, 0, ""},
	}
	for _, st := range steps {
		before := h.f.LastEventSeq()
		h.must("", st.typ, st.payload)
		s, err := h.f.HA()
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if s.Disarmed != st.wantDisarmed || s.Brake != st.wantBrake || s.AckUnreachable != st.wantAck {
			t.Fatalf("%s: switch %+v, want disarmed %v brake %v ack %d", st.name, s, st.wantDisarmed, st.wantBrake, st.wantAck)
		}
		evs, _ := h.f.Events(before, 10)
		switch {
		case st.wantEvent == "" && len(evs) != 0:
			t.Fatalf("%s: unexpected events %+v", st.name, evs)
		case st.wantEvent != "" && (len(evs) != 1 || evs[0].Kind != st.wantEvent):
			t.Fatalf("%s: events %+v, want one %s", st.name, evs, st.wantEvent)
		}
	}
	s, _ := h.f.HA()
	if s.DisarmedAt != (structs.HAState{}).DisarmedAt || s.BrakeReleaseCause != "nodes returned" || s.BrakeUnreachable != 3 {
		t.Fatalf("final switch %+v", s)
	}
}

// TestHASwitchReplays: the same log applied to a second FSM gives the same
// state file, byte for byte in every bucket.
func TestHASwitchReplays(t *testing.T) {
	cmds := []struct {
		typ     CommandType
		payload any
	}{
		{CmdSetHAArmed, SetHAArmed{Reason: "x"}},
		{CmdSetHABrake, SetHABrake{Engaged: true, Unreachable: 2, Nodes: 3}},
		{CmdSetHAArmed, SetHAArmed{Armed: true, AckUnreachable: 2}},
	}
	var dumps []map[string]map[string]string
	for range 2 {
		h := newHarness(t)
		for _, c := range cmds {
			h.must("", c.typ, c.payload)
		}
		d, err := h.f.Dump()
		if err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, d)
	}
	if a, b := dumps[0]["cluster"]["ha"], dumps[1]["cluster"]["ha"]; a == "" || a != b {
		t.Fatalf("replays differ or record missing:\n%s\n%s", a, b)
	}
}

// TestHARestartFailed: automatic HA's retry state of a VM is stored for
// its current placement only, its count only grows, and a placement move
// clears it.
func TestHARestartFailed(t *testing.T) {
	h := newHarness(t)
	n1, n2 := node("hv1"), node("hv2")
	h.must("", CmdRegisterNode, RegisterNode{Node: n1})
	h.must("", CmdRegisterNode, RegisterNode{Node: n2})
	v := vm("web")
	gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: n1.ID}).Index
	steps := []struct {
		name      string
		p         HARestartFailed
		wantErr   error // nil: applied
		wantCount int
		wantEvent bool
	}{
		{"first attempt", HARestartFailed{VMID: v.ID, NodeID: n1.ID, Generation: gen, Count: 1, Error: "no node fits", Retry: "2s"}, nil, 1, true},
		{"a repeat is quiet", HARestartFailed{VMID: v.ID, NodeID: n1.ID, Generation: gen, Count: 1, Error: "no node fits", Retry: "2s"}, nil, 1, false},
		{"stale generation", HARestartFailed{VMID: v.ID, NodeID: n1.ID, Generation: gen - 1, Count: 2}, structs.ErrConflict, 1, false},
		{"other node", HARestartFailed{VMID: v.ID, NodeID: n2.ID, Generation: gen, Count: 2}, structs.ErrConflict, 1, false},
		{"count 0", HARestartFailed{VMID: v.ID, NodeID: n1.ID, Generation: gen, Count: 0}, structs.ErrInvalid, 1, false},
		{"unknown vm", HARestartFailed{VMID: uuid.NewString(), NodeID: n1.ID, Generation: gen, Count: 1}, structs.ErrNotFound, 1, false},
		{"given up", HARestartFailed{VMID: v.ID, NodeID: n1.ID, Generation: gen, Count: 2, GaveUp: true, Error: "no node fits"}, nil, 2, true},
	}
	for _, st := range steps {
		before := h.f.LastEventSeq()
		r := h.apply("", CmdHARestartFailed, st.p)
		if (st.wantErr == nil) != (r.Err == nil) || (st.wantErr != nil && !errors.Is(r.Err, st.wantErr)) {
			t.Fatalf("%s: %v, want %v", st.name, r.Err, st.wantErr)
		}
		got, err := h.f.VM(v.ID)
		if err != nil || got.HARestarts == nil || got.HARestarts.Count != st.wantCount {
			t.Fatalf("%s: retry state %+v (%v), want count %d", st.name, got.HARestarts, err, st.wantCount)
		}
		if ev := h.f.LastEventSeq() != before; ev != st.wantEvent {
			t.Errorf("%s: event appended %v, want %v", st.name, ev, st.wantEvent)
		}
	}
	if got, _ := h.f.VM(v.ID); !got.HARestarts.GaveUp || got.HARestarts.LastError != "no node fits" {
		t.Errorf("retry state %+v, want given up with the last error", *got.HARestarts)
	}
	h.must("", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: n2.ID})
	if got, _ := h.f.VM(v.ID); got.HARestarts != nil {
		t.Errorf("retry state %+v after a placement move, want none", *got.HARestarts)
	}
}
