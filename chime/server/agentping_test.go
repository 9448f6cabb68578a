package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/structs"
)

// TestAgentPingChecksTheAnswer: the ping-back counts an answer only from the
// node pinged, registered (uniqueness rule 10), over real HTTP.
func TestAgentPingChecksTheAnswer(t *testing.T) {
	const id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	for _, tc := range []struct {
		name     string
		status   int
		body     string
		wantOK   bool
		identity bool // the error is a heartbeat.IdentityError
		conflict bool
		errHas   string
	}{
		{name: "the node, registered", status: 200, body: `{"node_id":"` + id + `","name":"hv1","registered":true}`, wantOK: true},
		{name: "an older agent (no registered field)", status: 200, body: `{"node_id":"` + id + `","name":"hv1"}`, wantOK: true},
		{name: "the node's id, not registered", status: 200, body: `{"node_id":"` + id + `","name":"hv1","registered":false}`, identity: true, errHas: "not registered"},
		{name: "another node", status: 200, body: `{"node_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","name":"hv9","registered":true}`, identity: true, conflict: true, errHas: "answered as node 7c9e6679"},
		{name: "empty body", status: 200, body: ``, errHas: "ping answer"},
		{name: "not JSON", status: 200, body: `pong`, errHas: "ping answer"},
		{name: "HTTP error", status: 500, body: `{}`, errHas: "HTTP 500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/ping" || r.Method != http.MethodGet {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			n := structs.Node{ID: id, Name: "hv1", APIAddr: strings.TrimPrefix(srv.URL, "http://")}
			err := agentPinger{client: srv.Client()}.Ping(context.Background(), n)
			if tc.wantOK {
				if err != nil {
					t.Fatalf("Ping = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("Ping = %v, want an error containing %q", err, tc.errHas)
			}
			ie, ok := err.(*heartbeat.IdentityError)
			if ok != tc.identity || (ok && ie.Conflict() != tc.conflict) {
				t.Fatalf("Ping = %#v; identity error %v (conflict %v) wanted", err, tc.identity, tc.conflict)
			}
		})
	}
}

// TestAgentPingDialsOnlyTheFixedPath: the ping-back requests GET /v1/ping
// at the record's host:port and nothing else; a record whose api_addr
// carries a path, a query, user info or another host is not dialled at
// all (no SSRF through a node record).
func TestAgentPingDialsOnlyTheFixedPath(t *testing.T) {
	const id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI())
		_, _ = w.Write([]byte(`{"node_id":"` + id + `","registered":true}`))
	}))
	defer srv.Close()
	hp := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		name, addr string
		dialled    bool
	}{
		{"host:port", hp, true},
		{"legacy http:// prefix", "http://" + hp, true},
		{"a path", hp + "/admin/delete", false},
		{"a query", hp + "?x=1", false},
		{"a path and query", "http://" + hp + "/v1/vms?x=1#", false},
		{"user info", "http://user:pw@" + hp, false},
		{"another scheme", "file:///etc/passwd", false},
		{"no port", "127.0.0.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got = nil
			err := agentPinger{client: srv.Client()}.Ping(context.Background(), structs.Node{ID: id, Name: "hv1", APIAddr: tc.addr})
			if tc.dialled {
				if err != nil || len(got) != 1 || got[0] != "GET /v1/ping" {
					t.Fatalf("Ping = %v, requests %v; want one GET /v1/ping", err, got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "api_addr") || len(got) != 0 {
				t.Fatalf("Ping = %v, requests %v; want an api_addr error and no request", err, got)
			}
		})
	}
}
