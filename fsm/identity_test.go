package fsm

import (
	"errors"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// TestSecretResetAndIdentity: a registration may replace a node's secret
// only after node.reset_secret, once; an identity conflict is recorded on
// the node until the replacement; older entries (ReplaceSecret false) keep
// the hash.
func TestSecretResetAndIdentity(t *testing.T) {
	type step struct {
		typ     CommandType
		payload func(id string) any
		wantErr error // errors.Is; nil: applies
	}
	reg := func(hash string, replace bool) func(string) any {
		return func(id string) any {
			n := node("hv1")
			n.ID = id
			return RegisterNode{Node: n, SecretHash: hash, ReplaceSecret: replace}
		}
	}
	reset := func(id string) any { return ResetSecret{NodeID: id} }
	conflict := func(id string) any {
		return NodeIdentity{NodeID: id, Kind: IdentityConflict, Detail: "10.0.0.9:4660 answered as node x"}
	}
	for _, tc := range []struct {
		name         string
		steps        []step
		wantHash     string
		wantReset    bool
		wantConflict bool
		wantEvent    string // kind of the last event
	}{
		{name: "re-registration keeps the hash", steps: []step{{CmdRegisterNode, reg("h2", false), nil}},
			wantHash: "h1", wantEvent: "node.reregistered"},
		{name: "replace without a reset is refused", steps: []step{{CmdRegisterNode, reg("h2", true), structs.ErrForbidden}},
			wantHash: "h1", wantEvent: "node.registered"},
		{name: "reset then replace", steps: []step{{CmdResetSecret, reset, nil}, {CmdRegisterNode, reg("h2", true), nil}},
			wantHash: "h2", wantEvent: "node.secret_replaced"},
		{name: "reset is used once", steps: []step{{CmdResetSecret, reset, nil}, {CmdRegisterNode, reg("h2", true), nil},
			{CmdRegisterNode, reg("h3", true), structs.ErrForbidden}}, wantHash: "h2", wantEvent: "node.secret_replaced"},
		{name: "reset pending", steps: []step{{CmdResetSecret, reset, nil}}, wantHash: "h1", wantReset: true, wantEvent: "node.secret_reset"},
		{name: "conflict recorded", steps: []step{{CmdNodeIdentity, conflict, nil}}, wantHash: "h1", wantConflict: true,
			wantEvent: "node.identity_conflict"},
		{name: "conflict cleared by the replacement", steps: []step{{CmdNodeIdentity, conflict, nil}, {CmdResetSecret, reset, nil},
			{CmdRegisterNode, reg("h2", true), nil}}, wantHash: "h2", wantEvent: "node.secret_replaced"},
		{name: "refused registration is an event only", steps: []step{{CmdNodeIdentity, func(id string) any {
			return NodeIdentity{NodeID: id, Kind: IdentityRefused, Detail: "from 10.0.0.11:4660"}
		}, nil}}, wantHash: "h1", wantEvent: "node.registration_refused"},
		{name: "unknown kind", steps: []step{{CmdNodeIdentity, func(id string) any { return NodeIdentity{NodeID: id, Kind: "x"} }, structs.ErrInvalid}},
			wantHash: "h1", wantEvent: "node.registered"},
		{name: "unknown node", steps: []step{{CmdResetSecret, func(string) any { return ResetSecret{NodeID: "nope"} }, structs.ErrNotFound}},
			wantHash: "h1", wantEvent: "node.registered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			n := node("hv1")
			h.must("", CmdRegisterNode, RegisterNode{Node: n, SecretHash: "h1"})
			for i, s := range tc.steps {
				r := h.apply("", s.typ, s.payload(n.ID))
				if (s.wantErr == nil) != (r.Err == nil) || (s.wantErr != nil && !errors.Is(r.Err, s.wantErr)) {
					t.Fatalf("step %d (%s): err = %v, want %v", i, s.typ, r.Err, s.wantErr)
				}
			}
			if got := h.f.NodeSecretHash(n.ID); got != tc.wantHash {
				t.Errorf("secret hash = %q, want %q", got, tc.wantHash)
			}
			got, err := h.f.Node(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.SecretReset != tc.wantReset || (got.IdentityConflict != "") != tc.wantConflict || got.IdentityConflictAt.IsZero() == tc.wantConflict {
				t.Errorf("node: secret_reset %v, identity_conflict %q at %v; want reset %v, conflict %v",
					got.SecretReset, got.IdentityConflict, got.IdentityConflictAt, tc.wantReset, tc.wantConflict)
			}
			evs, err := h.f.Events(0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if last := evs[len(evs)-1]; last.Kind != tc.wantEvent || last.NodeID != n.ID {
				t.Errorf("last event = %+v, want %s for the node", last, tc.wantEvent)
			}
		})
	}
}
