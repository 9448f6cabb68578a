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
