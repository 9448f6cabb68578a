package sim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// dirPrefix names every run's state directory: "chime-sim-<pid>-<random>",
// so that a later process can tell a dead run's leftovers (a killed or
// crashed test binary never reaches Close) from a live run's.
const dirPrefix = "chime-sim-"

// oldFormatAge is how old a state directory without a process id (made
// before the id was part of the name) must be before it is removed.
const oldFormatAge = time.Hour

// runDirPattern is the os.MkdirTemp pattern of this process's runs.
func runDirPattern() string { return fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()) }

// RemoveLeftovers removes the state directories under base that runs of
// dead processes left behind, and returns how many it removed. A directory
// of a live process (another test binary running now) is kept.
func RemoveLeftovers(base string) (int, error) {
	entries, err := os.ReadDir(base)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("sim leftovers in %s: %w", base, err)
	}
	n := 0
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, dirPrefix) || !leftover(base, name) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(base, name)); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// leftover reports whether the state directory name under base belongs to
// no live process.
func leftover(base, name string) bool {
	rest := strings.TrimPrefix(name, dirPrefix)
	pidText, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || pid <= 0 {
		// Made before the process id was in the name: old enough means dead.
		st, err := os.Stat(filepath.Join(base, name))
		return err == nil && time.Since(st.ModTime()) > oldFormatAge
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
