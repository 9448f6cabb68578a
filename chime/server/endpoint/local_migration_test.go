package endpoint_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

const hv3ID = "33333333-3333-4333-8333-333333333333"

// TestLocalMigrationReportsDecideTheRebuild: the heartbeat endpoint takes
// both ends' reports of a node-local migration (uniqueness rule 7). The
// source's log entry moves the placement to the destination and is
// acknowledged by name, so a later drain + rebuild of the source no
// longer includes the VM; an entry naming another source is refused (403)
// and a bad one answered 400 naming the field, both unacknowledged; a
// destination's announcement holds the VM against a rebuild of the source
// until an end reports the outcome or the destination is fenced; an
// announcement whose migration failed is dropped in the answer.
func TestLocalMigrationReportsDecideTheRebuild(t *testing.T) {
	type report struct {
		from string // reporting node
		hb   func(gen uint64) api.HeartbeatRequest
		err  error // the error kind the endpoint answers with (nil: accepted)
		acks bool  // the answer names the web entry as applied
		drop bool  // the answer drops the web announcement
	}
	entry := func(from, to, outcome string) func(gen uint64) api.HeartbeatRequest {
		return func(gen uint64) api.HeartbeatRequest {
			return api.HeartbeatRequest{NodeID: hv1ID, VMs: []structs.VMObservation{}, Migrations: []structs.LocalMigration{
				{VMID: "", ToAddr: "10.1.0.2", Generation: gen, FromNode: from, ToNode: to, Outcome: outcome}}}
		}
	}
	announce := func(gen uint64) api.HeartbeatRequest {
		return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{}, Announced: []structs.AdoptionRef{{Generation: gen}}}
	}
	cases := []struct {
		name        string
		reports     []report
		fenceDest   bool   // hv2 drained and fenced before the rebuild of hv1
		wantNode    string // web's node after the rebuild of hv1 ("rebuilt": any other node, by the rebuild)
		wantRebuild string // the rebuild task's state
	}{
		{"source reports success: moved, acknowledged, not rebuilt",
			[]report{{from: hv1ID, hb: entry(hv1ID, hv2ID, structs.LocalMigrationSucceeded), acks: true}},
			false, hv2ID, structs.TaskSucceeded},
		{"entry naming another source: refused, not acknowledged",
			[]report{{from: hv1ID, hb: entry(hv3ID, hv2ID, structs.LocalMigrationSucceeded), err: structs.ErrForbidden}},
			false, "rebuilt", structs.TaskSucceeded},
		{"bad outcome: invalid, not acknowledged",
			[]report{{from: hv1ID, hb: entry(hv1ID, hv2ID, "maybe"), err: structs.ErrInvalid}},
			false, "rebuilt", structs.TaskSucceeded},
		{"destination announced: held, the rebuild leaves it",
			[]report{{from: hv2ID, hb: announce}},
			false, hv1ID, structs.TaskFailed},
		{"announced, outcome unknown at the source: still held",
			[]report{{from: hv2ID, hb: announce}, {from: hv1ID, hb: entry(hv1ID, hv2ID, structs.LocalMigrationUnknown), acks: true}},
			false, hv1ID, structs.TaskFailed},
		{"announced, then failed at the source: released, the announcement dropped",
			[]report{{from: hv2ID, hb: announce}, {from: hv1ID, hb: entry(hv1ID, hv2ID, structs.LocalMigrationFailed), acks: true},
				{from: hv2ID, hb: announce, drop: true}},
			false, "rebuilt", structs.TaskSucceeded},
		{"announced, destination fenced: rebuilt",
			[]report{{from: hv2ID, hb: announce}},
			true, "rebuilt", structs.TaskSucceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			ctx := w.ctx
			w.register("reg-1", hv1ID, "hv1", 1)
			if _, err := w.ep.CreateVM(ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512}); err != nil {
				t.Fatal(err)
			}
			w.register("reg-2", hv2ID, "hv2", 2)
			w.register("reg-3", hv3ID, "hv3", 3)
			web := w.vm("web")
			for i, r := range tc.reports {
				hb := r.hb(web.Generation)
				hb.NodeID = r.from
				for j := range hb.Migrations {
					hb.Migrations[j].VMID = web.ID
				}
				for j := range hb.Announced {
					hb.Announced[j].VMID = web.ID
				}
				out, err := w.ep.Heartbeat(ctx, w.Node(r.from), hb)
				switch {
				case r.err == nil && err != nil:
					t.Fatalf("report %d: %v", i, err)
				case r.err != nil && !errors.Is(err, r.err):
					t.Fatalf("report %d answered %v, want %v", i, err, r.err)
				case errors.Is(err, structs.ErrInvalid) && structs.AsError(err).Field != "migrations":
					t.Fatalf("report %d: the error names %q, want migrations", i, structs.AsError(err).Field)
				}
				acked := slices.Contains(out.AppliedMigrations, structs.AdoptionRef{VMID: web.ID, Generation: web.Generation})
				if acked != r.acks {
					t.Fatalf("report %d: acknowledged %v, want %v (answer %+v)", i, acked, r.acks, out)
				}
				if dropped := slices.Contains(out.DroppedAdoptions, web.ID); dropped != r.drop {
					t.Fatalf("report %d: dropped %v, want %v (answer %+v)", i, dropped, r.drop, out)
				}
			}
			if tc.fenceDest {
				if _, err := w.ep.NodeAction(ctx, "drain-2", hv2ID, endpoint.NodeDrain, false); err != nil {
					t.Fatal(err)
				}
				if _, err := w.ep.NodeAction(ctx, "rebuild-2", hv2ID, endpoint.NodeRebuild, true); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := w.ep.NodeAction(ctx, "drain-1", hv1ID, endpoint.NodeDrain, false); err != nil {
				t.Fatal(err)
			}
			res, err := w.ep.NodeAction(ctx, "rebuild-1", hv1ID, endpoint.NodeRebuild, true)
			if err != nil {
				t.Fatalf("rebuild: %v", err)
			}
			task := w.Task(res.Task.ID)
			rebuilt := false
			for _, st := range task.Steps {
				rebuilt = rebuilt || (st.VMID == web.ID && st.State == structs.TaskSucceeded)
			}
			switch got := w.vm("web"); {
			case tc.wantNode == "rebuilt" && (got.NodeID == hv1ID || !rebuilt):
				t.Errorf("web on %s after the rebuild of hv1 (rebuilt by it: %v), want it rebuilt elsewhere", got.NodeID, rebuilt)
			case tc.wantNode != "rebuilt" && (got.NodeID != tc.wantNode || rebuilt):
				t.Errorf("web on %s after the rebuild of hv1 (rebuilt by it: %v), want %s and not rebuilt", got.NodeID, rebuilt, tc.wantNode)
			}
			if task.State != tc.wantRebuild {
				t.Errorf("rebuild task %s (%+v), want %s", task.State, task.Steps, tc.wantRebuild)
			}
			for _, st := range task.Steps {
				if st.VMID == web.ID && tc.wantRebuild == structs.TaskFailed && !strings.Contains(st.Error, "held: a node-local migration to node hv2") {
					t.Errorf("held step error %q does not say why", st.Error)
				}
			}
		})
	}
}
