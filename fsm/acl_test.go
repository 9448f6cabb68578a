package fsm

import (
	"errors"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// ACL commands: the bootstrap happens once; tokens are stored by accessor
// with their secret's hash only; accessor ids and hashes are unique; the
// last management token stays; a refused command changes nothing.
func TestACLCommands(t *testing.T) {
	h := newHarness(t)
	tok := func(id, role string) structs.ACLToken { return structs.ACLToken{AccessorID: id, Role: role} }
	h.must("boot", CmdACLBootstrap, ACLBootstrap{Token: tok("a-boot", "read"), SecretHash: "h-boot"})
	if got, _ := h.f.ACLTokenByHash("h-boot"); got == nil || got.Role != structs.RoleManagement || !got.Bootstrap || got.CreateIndex != 1 {
		t.Fatalf("bootstrap token %+v: want role management (whatever the payload says), bootstrap, index 1", got)
	}
	if h.f.ACLBootstrapIndex() != 1 {
		t.Fatalf("bootstrap index %d", h.f.ACLBootstrapIndex())
	}
	for _, tc := range []struct {
		name    string
		typ     CommandType
		payload any
		kind    error
		field   string
	}{
		{"second bootstrap", CmdACLBootstrap, ACLBootstrap{Token: tok("a-2", "management"), SecretHash: "h-2"}, structs.ErrConflict, "acl"},
		{"bad role", CmdACLTokenCreate, ACLTokenCreate{Token: tok("a-3", "admin"), SecretHash: "h-3"}, structs.ErrInvalid, "role"},
		{"accessor taken", CmdACLTokenCreate, ACLTokenCreate{Token: tok("a-boot", "read"), SecretHash: "h-4"}, structs.ErrConflict, "accessor_id"},
		{"hash taken", CmdACLTokenCreate, ACLTokenCreate{Token: tok("a-5", "read"), SecretHash: "h-boot"}, structs.ErrConflict, "secret"},
		{"no hash", CmdACLTokenCreate, ACLTokenCreate{Token: tok("a-6", "read")}, structs.ErrInvalid, "accessor_id"},
		{"delete the last management token", CmdACLTokenDelete, ACLTokenDelete{AccessorID: "a-boot"}, structs.ErrConflict, "accessor_id"},
		{"delete an unknown token", CmdACLTokenDelete, ACLTokenDelete{AccessorID: "nope"}, structs.ErrNotFound, "accessor_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := h.f.Dump()
			r := h.apply("", tc.typ, tc.payload)
			var se *structs.Error
			if !errors.Is(r.Err, tc.kind) || !errors.As(r.Err, &se) || se.Field != tc.field {
				t.Fatalf("%v, want %v on field %s", r.Err, tc.kind, tc.field)
			}
			after, _ := h.f.Dump()
			for _, b := range []string{"acl_tokens", "acl_token_hashes", "events"} {
				if len(before[b]) != len(after[b]) {
					t.Fatalf("refused command changed bucket %s", b)
				}
			}
		})
	}
	h.must("", CmdACLTokenCreate, ACLTokenCreate{Token: tok("a-op", structs.RoleOperator), SecretHash: "h-op"})
	h.must("", CmdACLTokenCreate, ACLTokenCreate{Token: tok("a-m2", structs.RoleManagement), SecretHash: "h-m2"})
	h.must("", CmdACLTokenDelete, ACLTokenDelete{AccessorID: "a-boot"}) // another management token exists now
	if got, _ := h.f.ACLTokenByHash("h-boot"); got != nil {
		t.Fatalf("deleted token still resolves: %+v", got)
	}
	toks, _ := h.f.ACLTokens()
	if len(toks) != 2 {
		t.Fatalf("tokens %+v", toks)
	}
	d, _ := h.f.Dump()
	for k, v := range d["acl_tokens"] {
		if strings.Contains(v, "h-") {
			t.Fatalf("token record %s carries its hash: %s", k, v)
		}
	}
}

// Per-node authorization is a property of the entry: a node.heartbeat
// written before it (Authorized false) adopts as it did, so old logs
// replay to the same state; an authorized one holds the VM instead.
func TestHeartbeatAuthorizedAdoption(t *testing.T) {
	for _, authorized := range []bool{false, true} {
		h := newHarness(t)
		a, b := node("a"), node("b")
		h.must("", CmdRegisterNode, RegisterNode{Node: a, SecretHash: "h-a"})
		h.must("", CmdRegisterNode, RegisterNode{Node: b, SecretHash: "h-b"})
		v := vm("web")
		gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: a.ID}).Index
		r := h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Adoptions: []Adoption{{VMID: v.ID, Generation: gen}}, Authorized: authorized})
		got, _ := h.f.VM(v.ID)
		switch {
		case !authorized && (got.NodeID != b.ID || len(r.Heartbeat.Adopted) != 1):
			t.Fatalf("unauthorized (old) entry: vm on %s, outcome %+v; want adopted by b as before", got.NodeID, r.Heartbeat)
		case authorized && (got.NodeID != a.ID || got.NodeLocal == nil || got.NodeLocal.To != b.ID || len(r.Heartbeat.Held) != 1 || len(r.Heartbeat.Rejected) != 0):
			t.Fatalf("authorized entry: vm on %s, hold %+v, outcome %+v; want held for b on a", got.NodeID, got.NodeLocal, r.Heartbeat)
		}
		if authorized {
			// A proof made with the source's stored hash moves it (the
			// source's announcement, reported by the destination); one
			// made with another key does not.
			h.must("", CmdHeartbeat, Heartbeat{NodeID: b.ID, Authorized: true, Adoptions: []Adoption{{VMID: v.ID, Generation: gen,
				Proof: structs.AdoptionProof("h-b", v.ID, gen)}}})
			if got, _ := h.f.VM(v.ID); got.NodeID != a.ID {
				t.Fatalf("a proof under the wrong key moved the VM to %s", got.NodeID)
			}
			// The source's report of the migration moves it; b's claim is then reflected.
			h.must("", CmdHeartbeat, Heartbeat{NodeID: a.ID, Authorized: true, LocalMoves: []structs.LocalMigration{
				{VMID: v.ID, FromNode: a.ID, ToNode: b.ID, Generation: gen, Outcome: structs.LocalMigrationSucceeded}}})
			if got, _ := h.f.VM(v.ID); got.NodeID != b.ID || got.AdoptGeneration != gen {
				t.Fatalf("after the source's report: vm on %s adopt generation %d, want b, %d", got.NodeID, got.AdoptGeneration, gen)
			}
		}
	}
}
