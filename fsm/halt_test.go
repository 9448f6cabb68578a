package fsm

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// TestFaultsHaltTheFSM: an entry that cannot be applied the way every
// replica must apply it stops the apply loop, loudly: the entry and every
// later one apply nothing, the index stays, Halted is closed and Err says
// why. Nothing is recorded as a refusal: a refusal is an answer, this is a
// fault.
func TestFaultsHaltTheFSM(t *testing.T) {
	envelope := func(t *testing.T, reqID string, typ CommandType, payload string) []byte {
		data, err := json.Marshal(Command{ID: reqID, Type: typ, Time: t0, Payload: json.RawMessage(payload)})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	tests := []struct {
		name  string
		entry func(t *testing.T, h *harness) []byte
		want  string // in Err()
	}{
		{"unknown command type", func(t *testing.T, h *harness) []byte {
			return envelope(t, "req-bad", CommandType("node.teleport"), `{}`)
		}, `unknown command type "node.teleport"`},
		{"undecodable envelope", func(t *testing.T, h *harness) []byte {
			return []byte(`{"id":"req-bad","type":`)
		}, "undecodable command envelope"},
		{"undecodable payload of a known type", func(t *testing.T, h *harness) []byte {
			return envelope(t, "req-bad", CmdSetDesired, `{"vm_id":42}`)
		}, "undecodable fsm.SetDesired payload"},
		{"bbolt refuses a write inside the apply transaction", func(t *testing.T, h *harness) []byte {
			// bbolt's key limit is 32768 bytes: the request record cannot
			// be written, after the command itself was.
			data, err := NewCommand(strings.Repeat("r", 40000), CmdCreateVM, t0, CreateVM{VM: vm("late")})
			if err != nil {
				t.Fatal(err)
			}
			return data
		}, "key too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			n := node("hv1")
			h.must("reg", CmdRegisterNode, RegisterNode{Node: n})
			before, _ := h.f.Dump()
			idx := h.f.Index()

			r := h.applyRaw(tt.entry(t, h))
			if r.Err == nil || !strings.Contains(r.Err.Error(), tt.want) {
				t.Fatalf("result err = %v, want the fatal error naming %q", r.Err, tt.want)
			}
			assertHalted(t, h, idx, tt.want)
			if _, _, seen := h.f.Applied("req-bad"); seen {
				t.Fatalf("the fatal entry was recorded as a refusal in the requests bucket")
			}

			// A valid command after it is not applied either.
			r = h.apply("req-after", CmdCreateVM, CreateVM{VM: vm("after"), NodeID: n.ID})
			if r.Err == nil || r.Err.Error() != h.f.Err().Error() {
				t.Fatalf("command after the halt: err = %v, want the fatal error %v", r.Err, h.f.Err())
			}
			assertHalted(t, h, idx, tt.want)
			after, _ := h.f.Dump()
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("the state changed after the halt")
			}
			if _, err := h.f.Snapshot(); err == nil {
				t.Fatalf("a halted FSM took a snapshot: it would be labelled with an index its state does not have")
			}
		})
	}
}

// TestStorageGoneHaltsTheFSM: the state file closed under the FSM (any
// bbolt error that is not a refusal) halts it instead of skipping the entry.
func TestStorageGoneHaltsTheFSM(t *testing.T) {
	h := newHarness(t)
	n := node("hv1")
	h.must("reg", CmdRegisterNode, RegisterNode{Node: n})
	idx := h.f.Index()
	if err := h.f.db.Close(); err != nil {
		t.Fatal(err)
	}
	r := h.apply("req-bad", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeDisabled})
	if r.Err == nil || !strings.Contains(r.Err.Error(), "database not open") {
		t.Fatalf("apply on a closed state file: err = %v, want the bbolt error", r.Err)
	}
	assertHalted(t, h, idx, "database not open")
}

func assertHalted(t *testing.T, h *harness, idx uint64, want string) {
	t.Helper()
	select {
	case <-h.f.Halted():
	case <-time.After(5 * time.Second):
		t.Fatalf("Halted() not closed (Err = %v)", h.f.Err())
	}
	if err := h.f.Err(); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Err() = %v, want it to name %q", err, want)
	}
	if got := h.f.Index(); got != idx {
		t.Fatalf("applied index moved to %d after the halt, want %d", got, idx)
	}
}

// TestIgnorableUnknownCommandIsSkipped: a newer version's command flagged
// ignorable is skipped with a warning; the index advances and later
// commands apply.
func TestIgnorableUnknownCommandIsSkipped(t *testing.T) {
	h := newHarness(t)
	data, err := json.Marshal(Command{ID: "future", Type: "node.teleport", Time: t0, Ignorable: true, Payload: json.RawMessage(`{"x":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.applyRaw(data); r.Err != nil {
		t.Fatalf("ignorable unknown command: %v", r.Err)
	}
	if h.f.Index() != 1 || h.f.Err() != nil {
		t.Fatalf("after an ignorable command: index %d, err %v; want 1, nil", h.f.Index(), h.f.Err())
	}
	select {
	case <-h.f.Halted():
		t.Fatalf("halted on an ignorable command")
	default:
	}
	n := node("hv1")
	h.must("reg", CmdRegisterNode, RegisterNode{Node: n})
	if _, err := h.f.Node(n.ID); err != nil || h.f.Index() != 2 {
		t.Fatalf("command after the skipped one: node %v, index %d", err, h.f.Index())
	}
}
