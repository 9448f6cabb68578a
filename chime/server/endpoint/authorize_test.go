package endpoint_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Registration needs the join credential for a new node; a known node
// re-registers with its secret; a reset secret is replaced only with the
// join credential (issue 12). A refusal changes nothing.
func TestRegisterNeedsTheJoinCredential(t *testing.T) {
	for _, tc := range []struct {
		name    string
		known   bool // hv1 registered first
		reset   bool // chime node reset-secret hv1
		secret  string
		joined  bool
		wantErr error
	}{
		{name: "new node, no join credential: refused", wantErr: structs.ErrForbidden},
		{name: "new node, join credential", joined: true},
		{name: "known node, its secret, no join credential", known: true, secret: fmt.Sprintf("%064d", 1)},
		{name: "known node, another secret, join credential: refused", known: true, secret: fmt.Sprintf("%064d", 9), joined: true, wantErr: structs.ErrForbidden},
		{name: "reset secret, no join credential: refused", known: true, reset: true, secret: fmt.Sprintf("%064d", 9), wantErr: structs.ErrForbidden},
		{name: "reset secret, join credential: replaced", known: true, reset: true, secret: fmt.Sprintf("%064d", 9), joined: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			if tc.known {
				w.register("r1", hv1ID, "hv1", 1)
			}
			if tc.reset {
				if _, err := w.ep.NodeAction(w.ctx, "reset", "hv1", endpoint.NodeResetSecret, false); err != nil {
					t.Fatal(err)
				}
			}
			req := registerRequest(hv1ID, "hv1", 1)
			if tc.secret != "" {
				req.Secret = tc.secret
			}
			before := w.dump()
			_, err := w.ep.RegisterWith(w.ctx, "r2", req, endpoint.Caller{Joined: tc.joined})
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("register: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				after := w.dump()
				delete(before, "events") // a refused known node is recorded as evidence (identity)
				delete(after, "events")
				delete(before, "meta")
				delete(after, "meta")
				if !reflect.DeepEqual(before["node_secrets"], after["node_secrets"]) || (!tc.known && len(after["nodes"]) != 0) {
					t.Fatalf("a refused registration changed nodes or secrets")
				}
				return
			}
			if _, err := w.ep.Authenticate(hv1ID, req.Secret); err != nil {
				t.Fatalf("the registered secret does not authenticate: %v", err)
			}
		})
	}
}

// Every item of a heartbeat is judged against the node that sent it:
// nothing node hv2 sends moves hv1's VM, unless a migration of it to hv2
// is recorded. The node-level checks refuse outright (403); the item-level
// ones hold or ignore, and the placement never moves.
func TestHeartbeatCannotMoveAnotherNodesVM(t *testing.T) {
	running := func(vm *structs.VM) structs.VMObservation {
		return structs.VMObservation{VMID: vm.ID, State: structs.StateRunning, Reason: "migrated", Generation: vm.Generation}
	}
	for _, tc := range []struct {
		name string
		// setup prepares the world (hv1 runs web; hv2 and hv3 are nodes)
		// and returns hv2's heartbeat.
		setup    func(w *world, web *structs.VM) api.HeartbeatRequest
		wantErr  error  // the endpoint refuses the whole heartbeat
		wantOn   string // where web is placed afterwards
		wantHold string // web's hold (NodeLocal.To) afterwards, "" none
	}{
		{name: "adoption claim nothing records: held for hv2, not moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{running(web)}}
			}, wantOn: hv1ID, wantHold: hv2ID},
		{name: "announcement, then adoption claim: held, not moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				w.hb(api.HeartbeatRequest{NodeID: hv2ID, Announced: []structs.AdoptionRef{{VMID: web.ID, Generation: web.Generation}}})
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{running(web)}}
			}, wantOn: hv1ID, wantHold: hv2ID},
		{name: "observation of the VM running on hv2: not recorded as its state",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}}
			}, wantOn: hv1ID},
		{name: "migration log entry naming hv1 as source: refused",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				return api.HeartbeatRequest{NodeID: hv2ID, Migrations: []structs.LocalMigration{{VMID: web.ID, FromNode: hv1ID, ToNode: hv2ID, Generation: web.Generation, Outcome: structs.LocalMigrationSucceeded}}}
			}, wantErr: structs.ErrForbidden, wantOn: hv1ID},
		{name: "hv2's own log claiming it migrated hv1's VM to hv3: not moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				return api.HeartbeatRequest{NodeID: hv2ID, Migrations: []structs.LocalMigration{{VMID: web.ID, FromNode: hv2ID, ToNode: hv3ID, Generation: web.Generation, Outcome: structs.LocalMigrationSucceeded}}}
			}, wantOn: hv1ID},
		{name: "hv2 reports failed a migration held for hv3: the hold stays",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				w.hb(api.HeartbeatRequest{NodeID: hv3ID, Announced: []structs.AdoptionRef{{VMID: web.ID, Generation: web.Generation}}})
				return api.HeartbeatRequest{NodeID: hv2ID, Migrations: []structs.LocalMigration{{VMID: web.ID, FromNode: hv2ID, ToNode: hv3ID, Generation: web.Generation, Outcome: structs.LocalMigrationFailed}}}
			}, wantOn: hv1ID, wantHold: hv3ID},
		{name: "announcement over the source's own report: the source's record stays",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				w.hb(api.HeartbeatRequest{NodeID: hv1ID, Migrations: []structs.LocalMigration{{VMID: web.ID, FromNode: hv1ID, ToNode: hv3ID, Generation: web.Generation, Outcome: structs.LocalMigrationUnknown}}})
				return api.HeartbeatRequest{NodeID: hv2ID, Announced: []structs.AdoptionRef{{VMID: web.ID, Generation: web.Generation}}}
			}, wantOn: hv1ID, wantHold: hv3ID},
		{name: "expired adoption of hv3's hold: the hold stays",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				w.hb(api.HeartbeatRequest{NodeID: hv3ID, Announced: []structs.AdoptionRef{{VMID: web.ID, Generation: web.Generation}}})
				return api.HeartbeatRequest{NodeID: hv2ID, ExpiredAdoptions: []structs.AdoptionRef{{VMID: web.ID, Generation: web.Generation}}}
			}, wantOn: hv1ID, wantHold: hv3ID},
		{name: "heartbeat for hv1 with hv2's credentials: refused",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				return api.HeartbeatRequest{NodeID: hv1ID, VMs: []structs.VMObservation{}}
			}, wantErr: structs.ErrForbidden, wantOn: hv1ID},
		{name: "adoption with a proof made with hv2's own secret: held, not moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				o := running(web)
				o.Proof = structs.AdoptionProof(structs.HashSecret(fmt.Sprintf("%064d", 2)), web.ID, web.Generation)
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{o}}
			}, wantOn: hv1ID, wantHold: hv2ID},
		{name: "adoption with hv1's proof of another generation: held, not moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				o := running(web)
				o.Proof = structs.AdoptionProof(structs.HashSecret(fmt.Sprintf("%064d", 1)), web.ID, web.Generation+1)
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{o}}
			}, wantOn: hv1ID, wantHold: hv2ID},
		// The recorded migrations: these do move it.
		{name: "adoption with the source's proof (its announcement): moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				o := running(web)
				o.Proof = structs.AdoptionProof(structs.HashSecret(fmt.Sprintf("%064d", 1)), web.ID, web.Generation)
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{o}}
			}, wantOn: hv2ID},
		{name: "adoption of a migration the source's log reported unknown: moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				w.hb(api.HeartbeatRequest{NodeID: hv1ID, Migrations: []structs.LocalMigration{{VMID: web.ID, FromNode: hv1ID, ToNode: hv2ID, Generation: web.Generation, Outcome: structs.LocalMigrationUnknown}}})
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{running(web)}}
			}, wantOn: hv2ID},
		{name: "adoption of a server-ordered migration to hv2: moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				w.Propose(fsm.CmdMigrationStart, fsm.MigrationStart{VMID: web.ID, TaskID: "t1", To: hv2ID, IfGeneration: web.Generation})
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{running(web)}}
			}, wantOn: hv2ID},
		{name: "adoption of a VM whose source is fenced: moved",
			setup: func(w *world, web *structs.VM) api.HeartbeatRequest {
				yes := true
				w.Propose(fsm.CmdSetNodeFlags, fsm.SetNodeFlags{NodeID: hv1ID, Fenced: &yes})
				return api.HeartbeatRequest{NodeID: hv2ID, VMs: []structs.VMObservation{running(web)}, Adopted: []structs.VMObservation{running(web)}}
			}, wantOn: hv2ID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.register("r1", hv1ID, "hv1", 1)
			if _, err := w.ep.CreateVM(w.ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512}); err != nil {
				t.Fatal(err)
			}
			w.register("r2", hv2ID, "hv2", 2) // after the create: web is on hv1
			w.register("r3", hv3ID, "hv3", 3)
			web := w.vm("web")
			w.heartbeat(hv1ID, structs.VMObservation{VMID: web.ID, State: structs.StateRunning, Reason: "booted", Generation: web.Generation})
			hb := tc.setup(w, web)
			before := w.vm("web")
			_, err := w.ep.Heartbeat(w.ctx, w.Node(hv2ID), hb)
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("heartbeat: %v, want %v", err, tc.wantErr)
			}
			after := w.vm("web")
			if after.NodeID != tc.wantOn {
				t.Fatalf("web placed on %s, want %s", after.NodeID, tc.wantOn)
			}
			hold := ""
			if nl := after.NodeLocal; nl != nil && nl.Outcome != structs.LocalMigrationFailed && tc.wantOn == hv1ID {
				hold = nl.To
			}
			if hold != tc.wantHold {
				t.Fatalf("web held for %q, want %q (%+v)", hold, tc.wantHold, after.NodeLocal)
			}
			if tc.wantOn == hv1ID && (after.Observed == nil || after.Observed.NodeID != hv1ID || after.Generation != before.Generation) {
				t.Fatalf("web's observation or generation changed: %+v", after)
			}
		})
	}
}

// hb sends a heartbeat as its own node.
func (w *world) hb(req api.HeartbeatRequest) {
	w.t.Helper()
	if _, err := w.ep.Heartbeat(w.ctx, w.Node(req.NodeID), req); err != nil {
		w.t.Fatalf("heartbeat of %s: %v", req.NodeID, err)
	}
}
