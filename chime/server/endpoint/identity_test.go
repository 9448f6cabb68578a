package endpoint_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

// TestLostSecretNeedsAReset: an agent that lost its data dir registers as
// its node (the id is the host's) with a new secret: refused, with an event
// and a message that names the operator's command, until `node
// reset-secret`; then its registration sets the new secret (once), the old
// secret stops working and the new one works.
func TestLostSecretNeedsAReset(t *testing.T) {
	newSecret := fmt.Sprintf("%064d", 77)
	for _, tc := range []struct {
		name      string
		reset     bool
		addr      string // the registering agent's API address ("": the node's own)
		secret    string // "none": the request carries no secret
		wantErr   error
		wantEvent string
	}{
		{name: "no reset: refused, an event", wantErr: structs.ErrForbidden, wantEvent: "node.registration_refused"},
		{name: "no reset, no secret at all: refused", secret: "none", wantErr: structs.ErrForbidden, wantEvent: "node.registration_refused"},
		{name: "no reset, another address while alive: conflict", addr: "10.0.0.99:4650", wantErr: structs.ErrForbidden, wantEvent: "node.identity_conflict"},
		{name: "after reset-secret: new secret set", reset: true, wantEvent: "node.secret_replaced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.register("r1", hv1ID, "hv1", 1)
			old := registerRequest(hv1ID, "hv1", 1).Secret
			if tc.reset {
				res, err := w.ep.NodeAction(w.ctx, "reset", "hv1", endpoint.NodeResetSecret, false)
				if err != nil || res.Node == nil || !res.Node.SecretReset {
					t.Fatalf("reset-secret = %+v, %v", res, err)
				}
				// The old secret works until the new one is set.
				if _, err := w.ep.Authenticate(hv1ID, old); err != nil {
					t.Fatalf("old secret while a reset is pending: %v", err)
				}
			}
			req := registerRequest(hv1ID, "hv1", 1)
			req.Secret = newSecret
			if tc.addr != "" {
				req.APIAddr = tc.addr
			}
			if tc.secret == "none" {
				req.Secret = ""
			}
			_, err := w.ep.Register(w.ctx, "r2", req)
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("register with a new secret: %v, want %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "chime node reset-secret hv1") {
				t.Errorf("refusal %q does not name the operator's command", err)
			}
			ev, _ := w.FSM.Events(0, 100)
			if last := ev[len(ev)-1]; last.Kind != tc.wantEvent || last.NodeID != hv1ID {
				t.Fatalf("last event %s (%s); want %s", last.Kind, last.Message, tc.wantEvent)
			}
			_, oldErr := w.ep.Authenticate(hv1ID, old)
			_, newErr := w.ep.Authenticate(hv1ID, newSecret)
			if tc.reset {
				if !errors.Is(oldErr, structs.ErrForbidden) || newErr != nil {
					t.Fatalf("after the replacement: old secret %v (want forbidden), new secret %v (want ok)", oldErr, newErr)
				}
				// The reset is used up: yet another secret is refused; the
				// new one re-registers (a retry whose answer was lost).
				again := registerRequest(hv1ID, "hv1", 1)
				again.Secret = fmt.Sprintf("%064d", 78)
				if _, err := w.ep.Register(w.ctx, "r3", again); !errors.Is(err, structs.ErrForbidden) {
					t.Fatalf("second replacement after one reset: %v, want forbidden", err)
				}
				if _, err := w.ep.Register(w.ctx, "r4", req); err != nil {
					t.Fatalf("retry with the new secret: %v", err)
				}
			} else if oldErr != nil || (newErr == nil && tc.secret != "none") {
				t.Fatalf("refused registration changed the secret: old %v, new %v", oldErr, newErr)
			}
		})
	}
}

// TestReregisterWithHostIdentity: an agent that lost its secret and
// presents the join credential gets a new secret without the operator
// when it presents the host identity its node is bound to (host UUID,
// machine id, address, agent certificate and its names); the node keeps
// its id and its VMs. Any other identity is a second host claiming the
// node: refused, naming what differs, and an identity conflict. Without
// the join credential, or for a node bound to no host UUID, the
// operator's reset-secret stays the way in. The node's own secret
// re-registers whatever it presents, and rebinds the node.
func TestReregisterWithHostIdentity(t *testing.T) {
	const machine = "0123456789abcdef0123456789abcdef"
	agentCert := endpoint.Caller{Joined: true, TLS: true, CertNames: "cn:hv1"}
	newSecret := fmt.Sprintf("%064d", 77)
	for _, tc := range []struct {
		name      string
		unbound   bool                                             // hv1 registered without a host UUID
		change    func(r *api.RegisterRequest, c *endpoint.Caller) // what the new registration presents differently
		ownSecret bool                                             // it presents hv1's secret
		wantErr   string                                           // "" accepted
		wantEvent string
	}{
		{name: "same identity, agent certificate: new secret", wantEvent: "node.secret_replaced"},
		{name: "same identity, join token and the certificate", change: func(r *api.RegisterRequest, c *endpoint.Caller) { c.JoinAccessor = "acc-2" },
			wantEvent: "node.secret_replaced"},
		{name: "same identity, no join credential: refused", change: func(r *api.RegisterRequest, c *endpoint.Caller) { *c = endpoint.Caller{} },
			wantErr: "chime node reset-secret hv1", wantEvent: "node.registration_refused"},
		{name: "another certificate name: conflict", change: func(r *api.RegisterRequest, c *endpoint.Caller) { c.CertNames = "cn:hv2" },
			wantErr: "certificate names", wantEvent: "node.identity_conflict"},
		{name: "the join token without a certificate: conflict", change: func(r *api.RegisterRequest, c *endpoint.Caller) {
			*c = endpoint.Caller{Joined: true, JoinAccessor: "acc"}
		},
			wantErr: "no agent certificate", wantEvent: "node.identity_conflict"},
		{name: "another address: conflict", change: func(r *api.RegisterRequest, c *endpoint.Caller) { r.APIAddr = "10.0.0.99:4650" },
			wantErr: "address 10.0.0.99", wantEvent: "node.identity_conflict"},
		{name: "another machine id: conflict", change: func(r *api.RegisterRequest, c *endpoint.Caller) { r.MachineID = "f" + machine[1:] },
			wantErr: "machine_id", wantEvent: "node.identity_conflict"},
		{name: "no host uuid: conflict", change: func(r *api.RegisterRequest, c *endpoint.Caller) { r.HostUUID = "" },
			wantErr: "host_uuid", wantEvent: "node.identity_conflict"},
		{name: "node bound to no host uuid: the operator's reset-secret", unbound: true,
			wantErr: "bound to no host identity", wantEvent: "node.registration_refused"},
		{name: "its own secret from another address: re-registered, rebound", ownSecret: true,
			change: func(r *api.RegisterRequest, c *endpoint.Caller) { r.APIAddr = "10.0.0.99:4650" }, wantEvent: "node.reregistered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			first := registerRequest(hv1ID, "hv1", 1)
			first.HostUUID, first.MachineID = hv1ID, machine
			if tc.unbound {
				first.HostUUID = ""
			}
			if _, err := w.ep.RegisterWith(w.ctx, "r1", first, agentCert); err != nil {
				t.Fatal(err)
			}
			if n, _ := w.FSM.Node(hv1ID); n.Binding == nil || n.Binding.CertNames != "cn:hv1" || n.Binding.Address != "10.0.0.1" {
				t.Fatalf("binding after the first registration: %+v", n.Binding)
			}
			web, err := w.ep.CreateVM(w.ctx, "c1", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512})
			if err != nil || web.NodeID != hv1ID {
				t.Fatalf("create web: %+v, %v", web, err)
			}
			req, c := first, agentCert
			req.Secret = newSecret
			if tc.ownSecret {
				req.Secret = first.Secret
			}
			if tc.change != nil {
				tc.change(&req, &c)
			}
			_, err = w.ep.RegisterWith(w.ctx, "r2", req, c)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("register: %v, want accepted", err)
			}
			if tc.wantErr != "" && (!errors.Is(err, structs.ErrForbidden) || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("register: %v, want 403 naming %q", err, tc.wantErr)
			}
			ev, _ := w.FSM.Events(0, 100)
			if last := ev[len(ev)-1]; last.Kind != tc.wantEvent || last.NodeID != hv1ID {
				t.Fatalf("last event %s (%s); want %s", last.Kind, last.Message, tc.wantEvent)
			}
			n, _ := w.FSM.Node(hv1ID)
			_, oldErr := w.ep.Authenticate(hv1ID, first.Secret)
			_, newErr := w.ep.Authenticate(hv1ID, newSecret)
			switch {
			case tc.ownSecret:
				if oldErr != nil || n.Binding.Address != "10.0.0.99" {
					t.Fatalf("own secret: authenticates %v, binding %+v (want rebound to 10.0.0.99)", oldErr, n.Binding)
				}
			case err == nil:
				if !errors.Is(oldErr, structs.ErrForbidden) || newErr != nil {
					t.Fatalf("after the replacement: old secret %v (want forbidden), new secret %v (want ok)", oldErr, newErr)
				}
			default:
				if oldErr != nil || newErr == nil {
					t.Fatalf("refused registration changed the secret: old %v, new %v", oldErr, newErr)
				}
				if n.Binding.CertNames != "cn:hv1" || n.Binding.Address != "10.0.0.1" {
					t.Fatalf("refused registration changed the binding: %+v", n.Binding)
				}
			}
			if tc.wantEvent == "node.identity_conflict" && !strings.Contains(n.IdentityConflict, "another host identity") {
				t.Fatalf("identity conflict on the node %q, want one naming another host identity", n.IdentityConflict)
			}
			if v := w.vm("web"); v.NodeID != hv1ID || v.Generation != web.Generation {
				t.Fatalf("web moved: node %s gen %d, want %s gen %d", v.NodeID, v.Generation, hv1ID, web.Generation)
			}
			if nodes, _ := w.FSM.Nodes(); len(nodes) != 1 || nodes[0].ID != hv1ID {
				t.Fatalf("nodes after: %d, want hv1 only", len(nodes))
			}
		})
	}
}
