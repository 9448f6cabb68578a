package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// aclWorld is a dev server with ACLs on, bootstrapped, with a token of
// every role, two registered nodes and a VM on one of them.
type aclWorld struct {
	s      *Server
	base   string
	tokens map[string]string // role → secret
	hv1    *api.RegisterResponse
	hv2    *api.RegisterResponse
	vm     *structs.VM
}

func newACLWorld(t *testing.T) *aclWorld {
	t.Helper()
	s, base := devServerWith(t, func(c *Config) {
		c.ACL = ACLOn
		c.HeartbeatInterval = 10 * time.Minute // no monitor writes during the test
	})
	w := &aclWorld{s: s, base: base, tokens: map[string]string{}}
	ctx := context.Background()
	anon := api.NewClient(base)
	w.tokens[structs.RoleManagement] = bootstrapToken(t, anon)
	if _, err := anon.ACLBootstrap(ctx); !errors.Is(err, structs.ErrConflict) || !strings.Contains(err.Error(), "bootstrapped already") {
		t.Fatalf("second bootstrap: %v, want a 409 that says ACLs are bootstrapped already", err)
	}
	mgmt := w.client(structs.RoleManagement)
	for _, role := range []string{structs.RoleRead, structs.RoleOperator, structs.RoleAgentJoin} {
		tok, err := mgmt.CreateToken(ctx, api.CreateTokenRequest{Role: role, Description: "test " + role})
		if err != nil {
			t.Fatalf("create %s token: %v", role, err)
		}
		w.tokens[role] = tok.SecretID
	}
	join := w.client(structs.RoleAgentJoin)
	w.hv1 = registerNode(t, join, "hv1")
	vm, err := w.client(structs.RoleOperator).CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64})
	if err != nil {
		t.Fatal(err)
	}
	w.vm = vm
	w.hv2 = registerNode(t, join, "hv2") // after the create: web is on hv1
	return w
}

func (w *aclWorld) client(role string) *api.Client {
	c := api.NewClient(w.base)
	c.Token = w.tokens[role]
	return c
}

// caller is one set of credentials a request is sent with.
type caller struct {
	name    string
	headers map[string]string
}

// TestRouteTable walks every route of the table and calls it without a
// token, with every weaker role, with an unknown token and with another
// node's credentials: each answers 401 or 403 with a JSON error body, and
// the replicated state (index and every bucket) is the same afterwards.
// Then each route, called with the role it needs, gets past the check.
func TestRouteTable(t *testing.T) {
	w := newACLWorld(t)
	if len(w.s.routes) < 30 {
		t.Fatalf("route table has %d routes", len(w.s.routes))
	}
	nodeCreds := func(id, secret string) map[string]string {
		return map[string]string{api.HeaderNode: id, api.HeaderSecret: secret}
	}
	tokenOf := func(role string) map[string]string { return map[string]string{api.HeaderToken: w.tokens[role]} }
	foreign := caller{"another node's credentials", nodeCreds(w.hv2.NodeID, w.hv2.Secret)}
	mixed := caller{"node hv1's id with hv2's secret", nodeCreds(w.hv1.NodeID, w.hv2.Secret)}
	unknown := caller{"an unknown token", map[string]string{api.HeaderToken: strings.Repeat("ab", 32)}}
	bearer := func(role string) caller {
		return caller{"bearer " + role, map[string]string{"Authorization": "Bearer " + w.tokens[role]}}
	}
	weaker := map[need][]string{
		needRead:       {structs.RoleAgentJoin},
		needOperator:   {structs.RoleAgentJoin, structs.RoleRead},
		needManagement: {structs.RoleAgentJoin, structs.RoleRead, structs.RoleOperator},
	}
	// Real targets: a refusal that failed would act on them.
	paths := map[string]string{
		"POST /v1/vms/{id}/{action}":            "/v1/vms/web/stop",
		"GET /v1/vms/{id}":                      "/v1/vms/web",
		"DELETE /v1/vms/{id}":                   "/v1/vms/web",
		"GET /v1/nodes/{id}":                    "/v1/nodes/hv1",
		"POST /v1/nodes/{id}/{action}":          "/v1/nodes/hv1/drain",
		"DELETE /v1/nodes/{id}":                 "/v1/nodes/hv2",
		"DELETE /v1/operator/raft/peers/{id}":   "/v1/operator/raft/peers/dev",
		"DELETE /v1/acl/tokens/{id}":            "/v1/acl/tokens/" + w.tokenAccessor(t, structs.RoleRead),
		"GET /v1/tasks/{id}":                    "/v1/tasks/nope",
		"GET /v1/incidents/{id}":                "/v1/incidents/1",
		"GET /v1/vms/{id}/failover":             "/v1/vms/web/failover",
		"GET /v1/nodes/{id}/failover":           "/v1/nodes/hv1/failover",
		"POST /v1/operator/ha/{action}":         "/v1/operator/ha/disarm",
		"PATCH /v1/vms/{id}":                    "/v1/vms/web",
		"POST /v1/nodes/{id}/fence":             "/v1/nodes/hv1/fence",
		"POST /v1/operator/gossip/keyring/{op}": "/v1/operator/gossip/keyring/install",
	}
	hb, _ := json.Marshal(api.HeartbeatRequest{NodeID: w.hv1.NodeID, VMs: []structs.VMObservation{}, Faults: []string{"kernel"}})
	bodies := map[string]string{
		"POST /v1/vms":                          `{"name":"intruder","vcpus":1,"memory_mib":64}`,
		"POST /v1/acl/tokens":                   `{"role":"management"}`,
		"PUT /v1/operator/snapshot":             "not a snapshot",
		"POST /v1/agent/register":               fmt.Sprintf(`{"id":%q,"name":"rogue","api_addr":"127.0.0.1:1","vcpus":65536,"memory_mib":1048576}`, uuid.NewString()),
		"POST /v1/agent/heartbeat":              string(hb),
		"POST /v1/agent/migrated":               fmt.Sprintf(`{"task_id":"t","vm_id":%q,"generation":%d,"ok":true}`, w.vm.ID, w.vm.Generation),
		"POST /v1/operator/ha/{action}":         `{"reason":"intruder"}`,
		"PATCH /v1/vms/{id}":                    `{"ha":false,"priority":"low"}`,
		"POST /v1/operator/gossip/keyring/{op}": `{"key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`,
	}
	// The routes of automatic HA have the roles docs/api.md gives them.
	wantNeed := map[string]need{
		"GET /v1/failover":                      needRead,
		"GET /v1/vms/{id}/failover":             needRead,
		"GET /v1/nodes/{id}/failover":           needRead,
		"GET /v1/operator/ha":                   needRead,
		"POST /v1/operator/ha/{action}":         needOperator,
		"PATCH /v1/vms/{id}":                    needOperator,
		"POST /v1/nodes/{id}/fence":             needOperator,
		"GET /v1/operator/gossip/keyring":       needManagement,
		"GET /v1/incidents":                     needRead,
		"GET /v1/incidents/{id}":                needRead,
		"POST /v1/operator/gossip/keyring/{op}": needManagement,
		"GET /ui/":                              needNone, // the console's static files; its data comes through the routes above
	}
	for _, rt := range w.s.routes {
		if want, ok := wantNeed[rt.pattern]; ok {
			if rt.need != want {
				t.Errorf("%s needs %s, want %s", rt.pattern, rt.need, want)
			}
			delete(wantNeed, rt.pattern)
		}
	}
	if len(wantNeed) > 0 {
		t.Errorf("routes missing from the table: %v", wantNeed)
	}

	w.waitAudit(t)
	before, beforeIdx := w.dumpState(t), w.s.fsm.Index()
	checked := 0
	for _, rt := range w.s.routes {
		method, path, ok := strings.Cut(rt.pattern, " ")
		if !ok || rt.need == needNone {
			continue // "/" (404 for anything) and the public routes
		}
		if p, ok := paths[rt.pattern]; ok {
			path = p
		}
		var callers []caller
		switch rt.need {
		case needAgent:
			callers = []caller{{"no credentials", nil}, mixed, {"a management token", tokenOf(structs.RoleManagement)}}
			if rt.pattern != "GET /v1/agent/desired" { // hv2 asking for its own desired state is its right
				callers = append(callers, foreign)
			}
		case needJoin:
			callers = []caller{{"no credentials", nil}, foreign, unknown, {"token read", tokenOf(structs.RoleRead)},
				{"token operator", tokenOf(structs.RoleOperator)}}
		default:
			callers = []caller{{"no token", nil}, foreign, unknown}
			for _, role := range weaker[rt.need] {
				callers = append(callers, caller{"token " + role, tokenOf(role)}, bearer(role))
			}
		}
		for _, c := range callers {
			status, e := w.call(t, method, path, bodies[rt.pattern], c.headers)
			if status != http.StatusUnauthorized && status != http.StatusForbidden {
				t.Errorf("%s (needs %s) with %s: status %d (%s), want 401 or 403", rt.pattern, rt.need, c.name, status, e.Message)
			}
			checked++
		}
	}
	// Refusals are audited (at most one record per source per minute):
	// the audit log's entries are the only change allowed.
	w.waitAudit(t)
	if after := w.dumpState(t); !reflect.DeepEqual(withoutAudit(before), withoutAudit(after)) {
		t.Fatalf("refused requests changed the state (index %d → %d)", beforeIdx, w.s.fsm.Index())
	}
	if n := auditEntriesSince(t, w.s, beforeIdx); n > 1 {
		t.Errorf("%d audit records for the refusals from one source within a minute, want at most 1", n)
	}
	t.Logf("%d routes, %d refused calls, state unchanged at index %d", len(w.s.routes), checked, beforeIdx)

	// With the role it needs (bearer or header), every route gets past the
	// check: targets that do not exist answer 404, bad bodies 400, never
	// 401 or 403.
	for _, rt := range w.s.routes {
		method, path, ok := strings.Cut(rt.pattern, " ")
		if !ok || rt.need == needNone || rt.need == needAgent || rt.need == needJoin {
			continue
		}
		path = strings.NewReplacer("{id}", "nope", "{action}", "stop").Replace(path)
		body := bodies[rt.pattern]
		if rt.pattern == "POST /v1/vms" {
			body = `{"name":"allowed","vcpus":1,"memory_mib":64}`
		}
		status, e := w.call(t, method, path, body, map[string]string{api.HeaderToken: w.tokens[rt.need.String()]})
		if status == http.StatusUnauthorized || status == http.StatusForbidden {
			t.Errorf("%s with role %s: status %d (%s)", rt.pattern, rt.need, status, e.Message)
		}
	}

	// An operator token disarms automatic HA and a read token sees it.
	ctx := context.Background()
	if _, err := w.client(structs.RoleRead).SetHAArmed(ctx, false, "read"); api.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("disarm with a read token: %v, want 403", err)
	}
	if _, err := w.client(structs.RoleOperator).SetHAArmed(ctx, false, "maintenance"); err != nil {
		t.Fatalf("disarm with an operator token: %v", err)
	}
	st, err := w.client(structs.RoleRead).HAStatus(ctx)
	if err != nil || st.Armed || !st.Switch.Disarmed || st.Switch.DisarmReason != "maintenance" {
		t.Fatalf("HA status with a read token after the disarm: %+v, %v, want disarmed for maintenance", st, err)
	}
}

// A route without a role does not get set up.
func TestRouteWithoutRolePanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "declares no role") {
			t.Fatalf("recovered %v, want a panic naming the missing role", r)
		}
	}()
	s := &Server{}
	var unset need
	s.addRoute(http.NewServeMux(), "GET /v1/new", local, unset, nil)
}

func (w *aclWorld) tokenAccessor(t *testing.T, role string) string {
	t.Helper()
	toks, err := w.client(structs.RoleManagement).ListTokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		if tok.Role == role {
			return tok.AccessorID
		}
	}
	t.Fatalf("no %s token in %+v", role, toks)
	return ""
}

func (w *aclWorld) dumpState(t *testing.T) map[string]map[string]string {
	t.Helper()
	d, err := w.s.fsm.Dump()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitAudit waits until no audit record is being written.
func (w *aclWorld) waitAudit(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !w.s.audit.idle() {
		if time.Now().After(deadline) {
			t.Fatal("audit records still being written after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// withoutAudit is a state dump without what the audit log's entries
// write: their events, their request records and the counters.
func withoutAudit(d map[string]map[string]string) map[string]map[string]string {
	out := map[string]map[string]string{}
	for b, m := range d {
		c := map[string]string{}
		for k, v := range m {
			switch {
			case b == "events" && strings.Contains(v, `"kind":"audit"`),
				b == "requests" && strings.HasPrefix(k, auditIDPrefix),
				b == "request_order" && strings.HasPrefix(v, auditIDPrefix),
				b == "meta" && (k == "index" || k == "event_seq" || k == "request_count"):
				continue
			}
			c[k] = v
		}
		out[b] = c
	}
	return out
}

// auditEntriesSince counts the audit records in the Raft entries after
// index (a CmdEvents entry holds several), and fails the test on any
// other command.
func auditEntriesSince(t *testing.T, s *Server, index uint64) int {
	t.Helper()
	n := 0
	for i := index + 1; i <= s.fsm.Index(); i++ {
		var l raft.Log
		if err := s.logs.GetLog(i, &l); err != nil {
			t.Fatalf("raft entry %d: %v", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		var c fsm.Command
		if err := json.Unmarshal(l.Data, &c); err != nil {
			t.Fatalf("raft entry %d: %v", i, err)
		}
		if (c.Type != fsm.CmdEvent && c.Type != fsm.CmdEvents) || !strings.HasPrefix(c.ID, auditIDPrefix) {
			t.Errorf("raft entry %d is %s (id %s), not an audit record", i, c.Type, c.ID)
			continue
		}
		if c.Type == fsm.CmdEvents {
			var p fsm.AppendEvents
			if err := json.Unmarshal(c.Payload, &p); err != nil {
				t.Fatalf("raft entry %d: %v", i, err)
			}
			n += len(p.Events)
			continue
		}
		n++
	}
	return n
}

// call sends one request and returns its status and JSON error body (a
// refusal that is not JSON fails the test).
func (w *aclWorld) call(t *testing.T, method, path, body string, headers map[string]string) (int, api.Error) {
	t.Helper()
	req, err := http.NewRequest(method, w.base+path, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e api.Error
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		if err := json.Unmarshal(data, &e); err != nil || e.Message == "" {
			t.Errorf("%s %s: refusal body is not a JSON error: %q", method, path, data)
		}
	}
	return resp.StatusCode, e
}

// Before the bootstrap only the public routes answer; the bootstrap token
// manages tokens; a deleted token stops working; the last management
// token cannot be deleted.
func TestACLBootstrapAndTokens(t *testing.T) {
	s, base := devServerWith(t, func(c *Config) { c.ACL = ACLOn })
	ctx := context.Background()
	anon := api.NewClient(base)
	if _, _, err := anon.ListVMs(ctx, api.QueryOptions{}); api.StatusOf(err) != http.StatusUnauthorized || !strings.Contains(err.Error(), "not bootstrapped") {
		t.Fatalf("list before the bootstrap: %v, want 401 naming the bootstrap", err)
	}
	if _, err := anon.Status(ctx); err != nil {
		t.Fatalf("status before the bootstrap: %v", err)
	}
	boot, err := anon.ACLBootstrap(ctx)
	if err != nil || boot.Role != structs.RoleManagement || len(boot.SecretID) != 64 || boot.AccessorID == "" {
		t.Fatalf("bootstrap: %+v, %v", boot, err)
	}
	mgmt := api.NewClient(base)
	mgmt.Token = boot.SecretID
	rd, err := mgmt.CreateToken(ctx, api.CreateTokenRequest{Role: structs.RoleRead, Description: "dashboards"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgmt.CreateToken(ctx, api.CreateTokenRequest{Role: "admin"}); api.StatusOf(err) != http.StatusBadRequest || api.AsError(err).Field != "role" {
		t.Fatalf("create with a bad role: %v, want 400 naming role", err)
	}
	toks, err := mgmt.ListTokens(ctx)
	if err != nil || len(toks) != 2 {
		t.Fatalf("list: %+v, %v", toks, err)
	}
	raw, _ := json.Marshal(toks)
	if strings.Contains(string(raw), boot.SecretID) || strings.Contains(string(raw), rd.SecretID) || strings.Contains(string(raw), "secret") {
		t.Fatalf("the list shows secrets: %s", raw)
	}
	if d, _ := s.fsm.Dump(); strings.Contains(fmt.Sprint(d), rd.SecretID) {
		t.Fatal("the state stores a token secret in the clear")
	}
	reader := api.NewClient(base)
	reader.Token = rd.SecretID
	if _, _, err := reader.ListVMs(ctx, api.QueryOptions{}); err != nil {
		t.Fatalf("read token lists: %v", err)
	}
	if _, err := reader.CreateVM(ctx, api.CreateVMRequest{Name: "x", VCPUs: 1, Memory: 64}); api.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("read token creates: %v, want 403", err)
	}
	if err := mgmt.DeleteToken(ctx, rd.AccessorID[:8]); err != nil {
		t.Fatalf("delete by prefix: %v", err)
	}
	if _, _, err := reader.ListVMs(ctx, api.QueryOptions{}); api.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("deleted token: %v, want 403", err)
	}
	if err := mgmt.DeleteToken(ctx, boot.AccessorID); !errors.Is(err, structs.ErrConflict) {
		t.Fatalf("delete the last management token: %v, want 409", err)
	}
}

// With ACLs off (--dev) nothing needs a token and the ACL routes say so.
func TestACLsOffInDev(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	if _, _, err := c.ListVMs(context.Background(), api.QueryOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ACLBootstrap(context.Background()); api.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("bootstrap in dev: %v, want 400 saying ACLs are disabled", err)
	}
}
