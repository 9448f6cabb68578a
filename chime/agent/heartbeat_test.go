package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/chime-ha/chime/chime/agent/health"
)

// TestHeartbeatCarriesHealthFaults: the agent's heartbeat includes the
// health faults, and a change of them asks for an early heartbeat.
func TestHeartbeatCarriesHealthFaults(t *testing.T) {
	cfg := testConfig(t, "127.0.0.1:1")
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.StoragePaths = []string{filepath.Join(file, "images")}
	a, err := New(cfg, newRecordingHV(&callLog{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	a.health.Check(context.Background())
	select {
	case <-a.heartbeatNow:
	default:
		t.Fatal("a new fault did not ask for an early heartbeat")
	}
	hb, _, err := a.BuildHeartbeat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"storage path " + cfg.StoragePaths[0] + " not writable: open " + filepath.Join(cfg.StoragePaths[0], health.ProbeFile) + ": not a directory"}
	if !slices.Equal(hb.Faults, want) {
		t.Fatalf("heartbeat faults = %q, want %q", hb.Faults, want)
	}
	if err := hb.Validate(); err != nil {
		t.Fatalf("heartbeat invalid: %v", err)
	}
}
