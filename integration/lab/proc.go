package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// listPids returns every pid in /proc.
func listPids() ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// netnsPids lists the live processes whose network namespace is the one
// nsPath names (what `ip netns pids` prints).
func netnsPids(nsPath string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		return nil, fmt.Errorf("netns %s: %w", nsPath, err)
	}
	all, err := listPids()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, pid := range all {
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st) != nil {
			continue
		}
		if st.Dev == want.Dev && st.Ino == want.Ino && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// alive reports whether pid exists and is not a zombie: daemons that were
// killed may linger unreaped under an init that does not reap.
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself
	// contain spaces or parentheses.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	state := data[i+2]
	return state != 'Z' && state != 'X'
}

func procComm(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

func procCmdline(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// qemuUUID returns the -uuid argument of a qemu process.
func qemuUUID(pid int) (string, bool) {
	args := procCmdline(pid)
	if len(args) == 0 {
		return "", false
	}
	base := filepath.Base(args[0])
	if !strings.HasPrefix(base, "qemu-system") && base != "qemu-kvm" {
		return "", false
	}
	for i := 1; i+1 < len(args); i++ {
		if args[i] == "-uuid" {
			return args[i+1], true
		}
	}
	return "", false
}

// waitGone polls until none of pids is alive.
func waitGone(ctx context.Context, pids []int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes still alive after %s: %v", timeout, left)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// killPids sends SIGKILL to pids and waits until they are gone.
func killPids(ctx context.Context, pids []int) error {
	self := os.Getpid()
	var errs []error
	var killed []int
	for _, pid := range pids {
		if pid == self || pid <= 1 {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
			continue
		}
		killed = append(killed, pid)
	}
	if err := waitGone(ctx, killed, 15*time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killNetns kills every process in a network namespace, in rounds, because a
// dying libvirtd may still have forked a child in the meantime.
func killNetns(ctx context.Context, nsPath string) error {
	for round := 0; round < 5; round++ {
		pids, err := netnsPids(nsPath)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if err := killPids(ctx, pids); err != nil {
			return err
		}
	}
	pids, _ := netnsPids(nsPath)
	if len(pids) > 0 {
		return fmt.Errorf("processes keep appearing in %s: %v", nsPath, pids)
	}
	return nil
}
