package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// auditLog is the audit log's events after a sequence number, through the
// API filter.
func (w *aclWorld) auditLog(t *testing.T, after uint64) []structs.Event {
	t.Helper()
	w.waitAudit(t)
	ev, _, err := w.client(structs.RoleRead).AuditEvents(context.Background(), after, 1000, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ev {
		if e.Kind != structs.EventAudit || e.Audit == nil {
			t.Fatalf("?audit returned a %s event: %+v", e.Kind, e)
		}
	}
	return ev
}

// TestAuditLog: a write is audited naming the token's accessor, the route,
// the target and the outcome; a refused write is audited (once per source
// per minute); a read is not; the default event listing leaves the audit
// log out.
func TestAuditLog(t *testing.T) {
	w := newACLWorld(t)
	ctx := context.Background()
	setup := w.auditLog(t, 0)
	if len(setup) == 0 {
		t.Fatal("the world's setup (tokens, registrations, a VM) left no audit record")
	}
	var sawRegister bool
	for _, e := range setup {
		if e.Audit.Route == "POST /v1/agent/register" && e.Audit.Status == http.StatusOK {
			sawRegister = true
		}
		if strings.Contains(e.Message, w.tokens[structs.RoleManagement]) || strings.Contains(e.Audit.Error, w.tokens[structs.RoleManagement]) {
			t.Errorf("audit record holds the management token's secret: %+v", e)
		}
	}
	if !sawRegister {
		t.Errorf("no audit record of an agent registration in %+v", setup)
	}
	last := setup[len(setup)-1].Seq

	// A write, by the operator token.
	if _, err := w.client(structs.RoleOperator).VMAction(ctx, w.vm.ID, "stop"); err != nil {
		t.Fatal(err)
	}
	// A read: not audited.
	if _, _, err := w.client(structs.RoleRead).ListVMs(ctx, api.QueryOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := w.auditLog(t, last)
	if len(ev) != 1 {
		t.Fatalf("after one write and one read: %d audit records, want 1: %+v", len(ev), ev)
	}
	a := ev[0].Audit
	want := structs.Audit{Actor: "token:" + w.tokenAccessor(t, structs.RoleOperator), Role: structs.RoleOperator,
		Method: http.MethodPost, Route: "POST /v1/vms/{id}/{action}", Path: "/v1/vms/" + w.vm.ID + "/stop", Status: http.StatusOK}
	if a.Actor != want.Actor || a.Role != want.Role || a.Method != want.Method || a.Route != want.Route || a.Path != want.Path || a.Status != want.Status || a.Error != "" {
		t.Errorf("audit record %+v, want %+v", *a, want)
	}
	if ev[0].VMID != w.vm.ID {
		t.Errorf("audit event's vm_id %q, want %q", ev[0].VMID, w.vm.ID)
	}
	last = ev[0].Seq

	// Refused writes: the first is recorded, the next ones from the same
	// source within the minute are not.
	read := w.client(structs.RoleRead)
	for i := 0; i < 3; i++ {
		if _, err := read.CreateVM(ctx, api.CreateVMRequest{Name: "intruder", VCPUs: 1, Memory: 64}); api.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("create with a read token: %v, want 403", err)
		}
	}
	ev = w.auditLog(t, last)
	if len(ev) != 1 {
		t.Fatalf("after three refused writes: %d audit records, want 1 (one per source per minute): %+v", len(ev), ev)
	}
	a = ev[0].Audit
	if a.Actor != "token:"+w.tokenAccessor(t, structs.RoleRead) || a.Status != http.StatusForbidden || a.Route != "POST /v1/vms" || !strings.Contains(a.Error, "needs role operator") {
		t.Errorf("refusal's audit record %+v, want the read token's accessor, 403, POST /v1/vms and the error", *a)
	}

	// The default listing has no audit events.
	all, _, err := read.EventsLimit(ctx, 0, 10000, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range all {
		if e.Kind == structs.EventAudit {
			t.Fatalf("default event listing holds an audit event: %+v", e)
		}
	}
	t.Logf("%d audit records in the setup, %d other events", len(setup), len(all))
}

// The refusal window: one record per source per minute, with the count of
// those left out; sources are independent.
func TestAuditRefusalWindow(t *testing.T) {
	a := newAuditor()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		source         string
		at             time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{"10.0.0.1", 0, true, 0},
		{"10.0.0.1", time.Second, false, 0},
		{"10.0.0.2", time.Second, true, 0},
		{"10.0.0.1", 59 * time.Second, false, 0},
		{"10.0.0.1", 61 * time.Second, true, 2},
		{"10.0.0.1", 62 * time.Second, false, 0},
	}
	for i, st := range steps {
		n, ok := a.admitRefusal(st.source, t0.Add(st.at))
		if ok != st.wantOK || n != st.wantSuppressed {
			t.Errorf("step %d (%s at %v): admitted %v with %d suppressed, want %v with %d", i, st.source, st.at, ok, n, st.wantOK, st.wantSuppressed)
		}
	}
}

// TestAuditBatchesConcurrentWrites: concurrent writes each get their audit
// record, and records that waited for one another share Raft entries
// (CmdEvents) instead of costing an entry each.
func TestAuditBatchesConcurrentWrites(t *testing.T) {
	w := newACLWorld(t)
	ctx := context.Background()
	setup := w.auditLog(t, 0)
	last := setup[len(setup)-1].Seq
	const n = 32
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := w.client(structs.RoleOperator).CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("batch-%02d", i), VCPUs: 1, Memory: 64})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ev := w.auditLog(t, last)
	entries := map[uint64]int{}
	for _, e := range ev {
		if e.Audit.Route != "POST /v1/vms" || e.Audit.Status >= 300 {
			t.Errorf("unexpected audit record %+v", *e.Audit)
		}
		entries[e.Index]++
	}
	if len(ev) != n {
		t.Fatalf("%d concurrent creates: %d audit records, want %d", n, len(ev), n)
	}
	t.Logf("%d audit records in %d Raft entries", len(ev), len(entries))
	if len(entries) >= n {
		t.Errorf("%d concurrent creates' audit records took %d entries: none shared one", n, len(entries))
	}
}

// TestAuditNamesATokenThatDeletedItself: a request's token is resolved
// once, for the ACL check and its audit record alike, so the record of a
// request that deleted its own token names that token (not
// token:unknown, as when the record resolved the token again after the
// delete).
func TestAuditNamesATokenThatDeletedItself(t *testing.T) {
	w := newACLWorld(t)
	ctx := context.Background()
	tok, err := w.client(structs.RoleManagement).CreateToken(ctx, api.CreateTokenRequest{Role: structs.RoleManagement, Description: "short-lived"})
	if err != nil {
		t.Fatal(err)
	}
	last := w.auditLog(t, 0)
	after := last[len(last)-1].Seq
	self := api.NewClient(w.base)
	self.Token = tok.SecretID
	if err := self.DeleteToken(ctx, tok.AccessorID); err != nil {
		t.Fatal(err)
	}
	ev := w.auditLog(t, after)
	if len(ev) != 1 {
		t.Fatalf("after one delete: %d audit records, want 1: %+v", len(ev), ev)
	}
	if a := ev[0].Audit; a.Actor != "token:"+tok.AccessorID || a.Role != structs.RoleManagement || a.Status >= 300 {
		t.Errorf("audit record %+v, want actor token:%s, role management, a success", *a, tok.AccessorID)
	}
}
