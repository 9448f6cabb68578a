package endpoint_test

import (
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

// TestHeldVM: a migration whose outcome the source reports unknown holds
// the VM (uniqueness rule 8): the source's desired state marks it held and
// carries no order any more, the destination keeps expecting it, and what
// settles it is evidence only.
func TestHeldVM(t *testing.T) {
	tests := []struct {
		name string
		// settle acts after the VM is held; it returns the node the VM must
		// end up placed on with no migration ("" = still held).
		settle func(t *testing.T, w *world, web *structs.VM) string
	}{
		{"no evidence: still held", func(t *testing.T, w *world, web *structs.VM) string { return "" }},
		{"the source does not list it: still held (absence proves nothing)", func(t *testing.T, w *world, web *structs.VM) string {
			ds, _ := w.ep.Desired(w.Node(hv1ID))
			if _, err := w.ep.Heartbeat(w.ctx, w.Node(hv1ID), api.HeartbeatRequest{NodeID: hv1ID, DesiredIndex: ds.Index, VMs: []structs.VMObservation{}}); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
		{"the destination lists it running: placed there; the late report changes nothing", func(t *testing.T, w *world, web *structs.VM) string {
			o := fsmtest.Observation(web, structs.StateRunning)
			o.Reason = "migrated"
			w.heartbeat(hv2ID, o)
			// The source's success report arriving afterwards is accepted as
			// already recorded.
			if err := w.ep.Migrated(w.ctx, "late", w.Node(hv1ID), api.MigrationReport{TaskID: web.Migration.TaskID, VMID: web.ID,
				Generation: web.Generation, OK: true}); err != nil {
				t.Fatalf("late success report: %v", err)
			}
			return hv2ID
		}},
		{"the source lists it running after applying the hold: stays there", func(t *testing.T, w *world, web *structs.VM) string {
			ds, _ := w.ep.Desired(w.Node(hv1ID))
			if _, err := w.ep.Heartbeat(w.ctx, w.Node(hv1ID), api.HeartbeatRequest{NodeID: hv1ID, DesiredIndex: ds.Index,
				VMs: []structs.VMObservation{fsmtest.Observation(web, structs.StateRunning)}}); err != nil {
				t.Fatal(err)
			}
			return hv1ID
		}},
		{"the source drained and rebuilt --confirm-fenced: placed on the destination", func(t *testing.T, w *world, web *structs.VM) string {
			if _, err := w.ep.NodeAction(w.ctx, "drain", hv1ID, endpoint.NodeDrain, false); err != nil {
				t.Fatal(err)
			}
			if _, err := w.ep.NodeAction(w.ctx, "rebuild", hv1ID, endpoint.NodeRebuild, true); err != nil {
				t.Fatal(err)
			}
			return hv2ID
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.register("reg-1", hv1ID, "hv1", 1)
			if _, err := w.ep.CreateVM(w.ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512}); err != nil {
				t.Fatal(err)
			}
			w.register("reg-2", hv2ID, "hv2", 2)
			web := w.vm("web")
			w.heartbeat(hv1ID, fsmtest.Observation(web, structs.StateRunning))
			task, err := w.ep.MigrateVM(w.ctx, "mig", "web", "hv2")
			if err != nil {
				t.Fatal(err)
			}
			if err := w.runner.Step(w.ctx); err != nil {
				t.Fatal(err)
			}
			if err := w.ep.Migrated(w.ctx, "rep", w.Node(hv1ID), api.MigrationReport{TaskID: task.ID, VMID: web.ID, Generation: web.Generation,
				Unknown: true, Error: "libvirt disconnected"}); err != nil {
				t.Fatal(err)
			}
			held := w.vm("web")
			if !held.Held() || held.State != structs.StateHeld {
				t.Fatalf("after an unknown outcome: state %s migration %+v, want held", held.State, held.Migration)
			}
			src, err := w.ep.Desired(w.Node(hv1ID))
			if err != nil {
				t.Fatal(err)
			}
			if len(src.VMs) != 1 || !src.VMs[0].Held || src.VMs[0].Migrate != nil {
				t.Fatalf("source's desired state while held: %+v, want the VM held and no order", src.VMs)
			}
			dst, _ := w.ep.Desired(w.Node(hv2ID))
			if len(dst.Incoming) != 1 || dst.Incoming[0].ID != web.ID {
				t.Fatalf("destination's incoming while held: %+v", dst.Incoming)
			}

			want := tt.settle(t, w, held)
			got := w.vm("web")
			if want == "" {
				if !got.Held() || got.NodeID != hv1ID {
					t.Fatalf("want still held on hv1: node %s migration %+v", got.NodeID, got.Migration)
				}
				return
			}
			if got.Migration != nil || got.NodeID != want || got.State == structs.StateHeld {
				t.Fatalf("want settled on %s: node %s state %s migration %+v", want, got.NodeID, got.State, got.Migration)
			}
		})
	}
}
