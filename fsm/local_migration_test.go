package fsm

import (
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// TestNodeLocalMigrationReports: each end of a node-local migration moves
// or holds the placement (uniqueness rule 7). The source's log entry with
// an outcome moves a VM still placed on it to the destination (adopt
// generation = the one that left), holds it when the outcome is unknown,
// releases a hold when it failed; the destination's announcement holds it;
// an expired announcement releases the hold with a failed adopt task (the
// alarm). Entries about a placement that moved on change nothing but an
// event; an entry without outcome (an older agent's) is an event only.
func TestNodeLocalMigrationReports(t *testing.T) {
	type want struct {
		node    string // "a", "b", "c": where the VM is placed after
		adopt   bool   // AdoptGeneration is the original generation
		held    bool   // HeldByNodeLocal
		outcome string // NodeLocal.Outcome when NodeLocal is set ("-": NodeLocal nil)
		event   string // an event of this kind was written
		task    bool   // a failed adopt task for b was written
	}
	cases := []struct {
		name  string
		setup func(h *harness, a, b, c structs.Node, v structs.VM, gen uint64)
		hb    func(a, b, c structs.Node, v structs.VM, gen uint64) Heartbeat
		want  want
	}{
		{"source reports success: placement moves to the destination",
			nil,
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationSucceeded}}}
			},
			want{node: "b", adopt: true, outcome: "-", event: "vm.local_migrated"}},
		{"old entry without outcome: an event only",
			nil,
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMigrations: []structs.LocalMigration{{VMID: v.ID, ToAddr: "10.0.0.2", Generation: gen}}}
			},
			want{node: "a", outcome: "-", event: "vm.local_migration"}},
		{"source reports unknown: held for the destination, not moved",
			nil,
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationUnknown}}}
			},
			want{node: "a", held: true, outcome: structs.LocalMigrationUnknown, event: "vm.local_migration_unknown"}},
		{"destination announces: held",
			nil,
			func(_, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: b.ID, Announced: []Adoption{{VMID: v.ID, Generation: gen}}}
			},
			want{node: "a", held: true, outcome: "", event: "vm.local_migration_announced"}},
		{"announced, then the source reports failure: released, kept as failed",
			func(h *harness, _, b, _ structs.Node, v structs.VM, gen uint64) {
				h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Announced: []Adoption{{VMID: v.ID, Generation: gen}}})
			},
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationFailed}}}
			},
			want{node: "a", outcome: structs.LocalMigrationFailed, event: "vm.local_migration_failed"}},
		{"failed, then a late announcement: stays released",
			func(h *harness, a, b, _ structs.Node, v structs.VM, gen uint64) {
				h.must("", CmdHeartbeat, Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationFailed}}})
			},
			func(_, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: b.ID, Announced: []Adoption{{VMID: v.ID, Generation: gen}}}
			},
			want{node: "a", outcome: structs.LocalMigrationFailed}},
		{"announced, then expired at the destination: released with an alarm",
			func(h *harness, _, b, _ structs.Node, v structs.VM, gen uint64) {
				h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Announced: []Adoption{{VMID: v.ID, Generation: gen}}})
			},
			func(_, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: b.ID, ExpiredAdoptions: []Adoption{{VMID: v.ID, Generation: gen}}}
			},
			want{node: "a", outcome: "-", event: "vm.local_migration_expired", task: true}},
		{"held, then the source reports success: moved and released",
			func(h *harness, _, b, _ structs.Node, v structs.VM, gen uint64) {
				h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Announced: []Adoption{{VMID: v.ID, Generation: gen}}})
			},
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationSucceeded}}}
			},
			want{node: "b", adopt: true, outcome: "-", event: "vm.local_migrated"}},
		{"destination adopted first: the source's entry changes nothing",
			func(h *harness, _, b, _ structs.Node, v structs.VM, gen uint64) {
				h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Adoptions: []Adoption{{VMID: v.ID, Generation: gen}}})
			},
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationSucceeded}}}
			},
			want{node: "b", adopt: true, outcome: "-", event: "vm.local_migration"}},
		{"placement moved on (rebuilt on c): the entry is refused",
			func(h *harness, _, _, c structs.Node, v structs.VM, gen uint64) {
				h.must("", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: c.ID, IfGeneration: gen})
			},
			func(a, b, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: b.ID, Outcome: structs.LocalMigrationSucceeded}}}
			},
			want{node: "c", outcome: "-", event: "vm.local_migration"}},
		{"reported by a node the VM is not on: refused",
			nil,
			func(_, b, c structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: c.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: c.ID, ToNode: b.ID, Outcome: structs.LocalMigrationSucceeded}}}
			},
			want{node: "a", outcome: "-", event: "vm.local_migration"}},
		{"unknown destination node: refused",
			nil,
			func(a, _, _ structs.Node, v structs.VM, gen uint64) Heartbeat {
				return Heartbeat{NodeID: a.ID, LocalMoves: []structs.LocalMigration{
					{VMID: v.ID, Generation: gen, FromNode: a.ID, ToNode: "99999999-0000-0000-0000-000000000000", Outcome: structs.LocalMigrationSucceeded}}}
			},
			want{node: "a", outcome: "-", event: "vm.local_migration"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			a, b, c := node("a"), node("b"), node("c")
			for _, n := range []structs.Node{a, b, c} {
				h.must("", CmdRegisterNode, RegisterNode{Node: n})
			}
			v := vm("web")
			gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: a.ID}).Index
			if tc.setup != nil {
				tc.setup(h, a, b, c, v, gen)
			}
			events0 := h.f.LastEventSeq()
			r := h.must("", CmdHeartbeat, tc.hb(a, b, c, v, gen))
			got, err := h.f.VM(v.ID)
			if err != nil {
				t.Fatal(err)
			}
			names := map[string]string{a.ID: "a", b.ID: "b", c.ID: "c"}
			if names[got.NodeID] != tc.want.node {
				t.Errorf("placed on %s, want %s", names[got.NodeID], tc.want.node)
			}
			if tc.want.adopt && (got.AdoptGeneration != gen || got.Generation <= gen || got.Generation > r.Index) {
				t.Errorf("generation %d adopt %d, want a new generation (at most %d) adopting %d", got.Generation, got.AdoptGeneration, r.Index, gen)
			}
			if got.HeldByNodeLocal() != tc.want.held {
				t.Errorf("held = %v, want %v (%+v)", got.HeldByNodeLocal(), tc.want.held, got.NodeLocal)
			}
			switch {
			case tc.want.outcome == "-" && got.NodeLocal != nil:
				t.Errorf("node-local record %+v, want none", got.NodeLocal)
			case tc.want.outcome != "-" && (got.NodeLocal == nil || got.NodeLocal.Outcome != tc.want.outcome || got.NodeLocal.To != b.ID):
				t.Errorf("node-local record %+v, want to b, outcome %q", got.NodeLocal, tc.want.outcome)
			}
			ev, _ := h.f.Events(events0, 100)
			var kinds []string
			found := tc.want.event == ""
			for _, e := range ev {
				kinds = append(kinds, e.Kind)
				found = found || e.Kind == tc.want.event
			}
			if !found {
				t.Errorf("events %v, want one %s", kinds, tc.want.event)
			}
			task, _ := h.f.Task(AdoptTaskID(v.ID, gen, b.ID))
			if gotTask := task != nil && task.State == structs.TaskFailed; gotTask != tc.want.task {
				t.Errorf("failed adopt task = %+v, want %v", task, tc.want.task)
			} else if gotTask && !strings.Contains(task.Error, "never arrived") {
				t.Errorf("adopt task error %q does not say the announcement expired", task.Error)
			}
		})
	}
}
