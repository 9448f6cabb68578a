package fsm

import (
	"errors"
	"reflect"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// Uniqueness rule 11 in the FSM: the modify-index compare-and-sets of
// vm.place, node.set_management and node.set_flags refuse a decision
// taken on a node or VM that changed since, change nothing when they do,
// and are not checked when zero (entries written before they existed
// apply as they always did).
func TestModifyIndexCompareAndSets(t *testing.T) {
	type setup struct {
		h        *harness
		hv1, hv2 string
		v        structs.VM
		nodeIdx  uint64 // hv1's modify index before the concurrent change
		vmIdx    uint64 // the VM's modify index before the concurrent change
	}
	build := func(t *testing.T) setup {
		h := newHarness(t)
		n1, n2 := node("hv1"), node("hv2")
		h.must("", CmdRegisterNode, RegisterNode{Node: n1})
		h.must("", CmdRegisterNode, RegisterNode{Node: n2})
		v := vm("web")
		h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: n1.ID})
		h.must("", CmdSetManagement, SetManagement{NodeID: n1.ID, State: structs.NodeDrained})
		n, _ := h.f.Node(n1.ID)
		cur, _ := h.f.VM(v.ID)
		return setup{h: h, hv1: n1.ID, hv2: n2.ID, v: *cur, nodeIdx: n.ModifyIndex, vmIdx: cur.ModifyIndex}
	}
	enable := func(s setup) {
		s.h.must("", CmdSetManagement, SetManagement{NodeID: s.hv1, State: structs.NodeEnabled})
	}
	desired := func(s setup) { s.h.must("", CmdSetDesired, SetDesired{VMID: s.v.ID, State: structs.DesiredStopped}) }
	tests := []struct {
		name       string
		concurrent func(setup) // lands between the read and the decision
		decision   func(setup) (CommandType, any)
		field      string // the refusal's field; "" = applies
	}{
		{"rebuild placement after an enable", enable, func(s setup) (CommandType, any) {
			return CmdPlaceVM, PlaceVM{VMID: s.v.ID, NodeID: s.hv2, IfGeneration: s.v.Generation, IfNodeModifyIndex: s.nodeIdx}
		}, "node_modify_index"},
		{"rebuild placement on an unchanged node", nil, func(s setup) (CommandType, any) {
			return CmdPlaceVM, PlaceVM{VMID: s.v.ID, NodeID: s.hv2, IfGeneration: s.v.Generation, IfModifyIndex: s.vmIdx, IfNodeModifyIndex: s.nodeIdx}
		}, ""},
		{"old entry without modify indexes after an enable", enable, func(s setup) (CommandType, any) {
			return CmdPlaceVM, PlaceVM{VMID: s.v.ID, NodeID: s.hv2, IfGeneration: s.v.Generation}
		}, ""},
		{"cold move after a change of desired state", desired, func(s setup) (CommandType, any) {
			return CmdPlaceVM, PlaceVM{VMID: s.v.ID, NodeID: s.hv2, IfGeneration: s.v.Generation, IfModifyIndex: s.vmIdx}
		}, "modify_index"},
		{"enable after an enable and a drain", func(s setup) {
			enable(s)
			s.h.must("", CmdSetManagement, SetManagement{NodeID: s.hv1, State: structs.NodeDrained})
		}, func(s setup) (CommandType, any) {
			return CmdSetManagement, SetManagement{NodeID: s.hv1, State: structs.NodeEnabled, IfModifyIndex: s.nodeIdx}
		}, "node_modify_index"},
		{"fence after an enable", enable, func(s setup) (CommandType, any) {
			yes := true
			return CmdSetNodeFlags, SetNodeFlags{NodeID: s.hv1, Fenced: &yes, IfModifyIndex: s.nodeIdx}
		}, "node_modify_index"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := build(t)
			if tt.concurrent != nil {
				tt.concurrent(s)
			}
			before, _ := s.h.f.Dump()
			typ, p := tt.decision(s)
			r := s.h.apply("decision", typ, p)
			after, _ := s.h.f.Dump()
			for _, b := range []string{"meta", "requests", "request_order"} {
				delete(before, b)
				delete(after, b)
			}
			if tt.field == "" {
				if r.Err != nil {
					t.Fatalf("refused: %v", r.Err)
				}
				return
			}
			var e *structs.Error
			if !errors.As(r.Err, &e) || !errors.Is(r.Err, structs.ErrConflict) || e.Field != tt.field {
				t.Fatalf("err = %v, want a conflict naming %q", r.Err, tt.field)
			}
			if !reflect.DeepEqual(before, after) {
				t.Fatal("a refused decision changed the state")
			}
		})
	}
}

// Finding 11: node.set_management with ReleaseDrainID releases the local
// drain on a node that is enabled already; an entry without it (written
// before it existed) still changes nothing, as it always did.
func TestEnableReleasesTheLocalDrainOfAnEnabledNode(t *testing.T) {
	h := newHarness(t)
	n := node("hv1")
	h.must("", CmdRegisterNode, RegisterNode{Node: n})
	id, yes := "d-1", true
	h.must("", CmdSetNodeFlags, SetNodeFlags{NodeID: n.ID, LocalDrained: &yes, LocalDrainID: &id})
	before, _ := h.f.Node(n.ID)

	h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeEnabled}) // an old entry
	if got, _ := h.f.Node(n.ID); got.ModifyIndex != before.ModifyIndex || got.ReleasedDrainID != "" {
		t.Fatalf("an old enable entry on an enabled node changed it (released %q): old entries must replay as before", got.ReleasedDrainID)
	}
	h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeEnabled, ReleaseDrainID: "d-0"}) // not the current drain
	if got, _ := h.f.Node(n.ID); got.ReleasedDrainID != "" {
		t.Fatalf("a release of another drain id set released %q", got.ReleasedDrainID)
	}
	r := h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeEnabled, ReleaseDrainID: "d-1"})
	got, _ := h.f.Node(n.ID)
	if got.ReleasedDrainID != "d-1" || got.ManagementState != structs.NodeEnabled {
		t.Fatalf("released %q, management %s: want d-1 released on the enabled node", got.ReleasedDrainID, got.ManagementState)
	}
	if h.f.NodeIndex(n.ID) != r.Index {
		t.Fatalf("desired-state index %d, want %d: the agent's query must wake to learn the release", h.f.NodeIndex(n.ID), r.Index)
	}
}
