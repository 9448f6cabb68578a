package sim

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestRemoveLeftovers: the state dirs of a dead process and old ones
// without a process id go; this process's, a live process's, a fresh
// old-format one and unrelated entries stay.
func TestRemoveLeftovers(t *testing.T) {
	base := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := strconv.Itoa(dead.Process.Pid)
	dirs := map[string]bool{ // name → removed
		dirPrefix + deadPID + "-123":                       true,
		dirPrefix + strconv.Itoa(os.Getpid()) + "-456":     false,
		dirPrefix + "1-789":                                false, // pid 1 is alive
		dirPrefix + "999999999-1":                          true,  // no such process
		dirPrefix + "old-format-stale":                     true,
		dirPrefix + "42424242":                             false, // fresh, old format
		"other-" + strconv.Itoa(os.Getpid()) + "-leftover": false,
	}
	for name := range dirs {
		if err := os.Mkdir(filepath.Join(base, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	stale := time.Now().Add(-2 * oldFormatAge)
	if err := os.Chtimes(filepath.Join(base, dirPrefix+"old-format-stale"), stale, stale); err != nil {
		t.Fatal(err)
	}
	n, err := RemoveLeftovers(base)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for name, removed := range dirs {
		_, err := os.Stat(filepath.Join(base, name))
		if gone := os.IsNotExist(err); gone != removed {
			t.Errorf("%s: removed %v, want %v", name, gone, removed)
		}
		if removed {
			want++
		}
	}
	if n != want {
		t.Errorf("RemoveLeftovers = %d, want %d", n, want)
	}
	if n, err := RemoveLeftovers(filepath.Join(base, "missing")); n != 0 || err != nil {
		t.Errorf("missing base: %d, %v; want 0, nil", n, err)
	}
}
