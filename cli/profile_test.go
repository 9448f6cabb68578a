package cli

import (
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"testing"
	"time"
)

// TestStartCPUProfile: the profile file exists and is non-empty once
// stopped, another profile can start after it, and a path that cannot be
// created is an error naming it.
func TestStartCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	stop, err := startCPUProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	stop()
	st, err := os.Stat(path)
	if err != nil || st.Size() == 0 {
		t.Fatalf("profile %s: %v, size %d", path, err, st.Size())
	}
	if err := pprof.StartCPUProfile(io.Discard); err == nil {
		pprof.StopCPUProfile()
	} else {
		t.Fatalf("the profile was not stopped: %v", err)
	}
	if _, err := startCPUProfile(filepath.Join(t.TempDir(), "no", "such", "dir", "cpu.pprof")); err == nil {
		t.Fatal("a profile in a missing directory started")
	}
}

// TestStartMemProfile: the heap profile is written when the returned
// function runs (non-empty, a gzipped pprof), and a path that cannot be
// created is an error at start.
func TestStartMemProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "heap.pprof")
	write, err := startMemProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 0 {
		t.Fatalf("profile %s before stop: %v", path, err)
	}
	if err := write(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		t.Fatalf("profile %s: %d bytes, not gzip", path, len(data))
	}
	if _, err := startMemProfile(filepath.Join(t.TempDir(), "no", "such", "dir", "heap.pprof")); err == nil {
		t.Fatal("a profile in a missing directory was accepted")
	}
}
