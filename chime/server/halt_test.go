package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/fsm"
)

// TestUnknownCommandStopsTheServer: a log entry of a type this version
// does not know (and not flagged ignorable) halts the state machine; the
// server reports unhealthy, and Wait (what Run returns through) shuts it
// down with the error instead of serving a state that stopped following
// the log.
func TestUnknownCommandStopsTheServer(t *testing.T) {
	s, base := devServer(t)
	data, err := json.Marshal(fsm.Command{ID: "from-the-future", Type: "node.teleport", Time: time.Now(), Payload: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	before := s.fsm.Index()
	f := s.raft.Apply(data, 10*time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	if res, ok := f.Response().(*fsm.Result); !ok || res.Err == nil || !strings.Contains(res.Err.Error(), "node.teleport") {
		t.Fatalf("apply answered %+v, want the fatal error naming the type", f.Response())
	}
	select {
	case <-s.Halted():
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not report its state machine halted")
	}
	if s.fsm.Index() != before {
		t.Fatalf("applied index moved %d → %d past the unknown entry", before, s.fsm.Index())
	}
	resp, err := http.Get(base + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "node.teleport") {
		t.Fatalf("health: %d %s, want 503 naming the unknown type", resp.StatusCode, body)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "node.teleport") {
			t.Fatalf("Wait returned %v, want the halt's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Wait did not return after the state machine halted")
	}
	if _, err := http.Get(base + "/v1/health"); err == nil {
		t.Fatal("the API still answers after the server stopped")
	}
}
