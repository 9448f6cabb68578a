package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm/raftlog"
	"github.com/chime-ha/chime/integration/ports"
)

// TestSecondServerOnADataDirFails: a second server started on a data dir in use gives up
// within seconds, saying why, and leaves the first one's files alone; the data dir holds the
// Raft log in raft-wal/ next to raft.db.
func TestSecondServerOnADataDirFails(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	tc := newTestCluster(t, 1, func(c *Config) { c.Join = nil })
	tc.leader(30 * time.Second)
	cfg := tc.cfgs[0]
	p := ports.Free(t, "127.0.0.1", 3)
	cfg.APIPort, cfg.RaftPort, cfg.GossipPort = p[0], p[1], p[2]
	cfg.Join = nil
	start := time.Now()
	s, err := Start(context.Background(), cfg)
	if err == nil {
		s.Shutdown()
		t.Fatal("a second server on the same data dir started")
	}
	if !strings.Contains(err.Error(), "locked by another process") || !strings.Contains(err.Error(), raftlog.StableFile) {
		t.Fatalf("second server: %v, want an error saying %s is locked by another process", err, raftlog.StableFile)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the second server took %v to give up", d)
	}
	for _, name := range []string{raftlog.StableFile, raftlog.WALDir} {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, name)); err != nil {
			t.Errorf("data dir of the running server: %v", err)
		}
	}
	// The first server still writes.
	if _, err := tc.client(0).CreateVM(context.Background(), api.CreateVMRequest{Name: "after-second", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatalf("create on the first server after the second's attempt: %v", err)
	}
}
