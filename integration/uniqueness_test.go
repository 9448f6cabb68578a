package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/integration/lab"
)

// uniquenessChecker watches the uniqueness promise (docs/architecture.md,
// "Rules the code keeps") from outside chime: a
// goroutine lists every host's qemu processes (their -uuid argument names
// the VM) every interval and records the moment a VM has a qemu process on
// two hosts at once. Tests start it before they act and call check at the
// end. One poll reads the hosts one after the other, so a live migration
// (both sides hold a qemu for a moment, libvirt runs only one) would need
// an exception; the scenarios here do not migrate.
type uniquenessChecker struct {
	hosts    []*lab.Host
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{}

	mu         sync.Mutex
	polls      int      // completed polls of all hosts
	errs       int      // polls that failed to list a host
	lastErr    error    // the last listing error
	duplicates []string // "15:04:05.000 uuid on hv1/123 and hv2/456", in order seen
	maxVMs     int      // most VMs seen running at once

	// An operator's --confirm-fenced that is a lie (the node still runs its
	// VMs), as a test tells it (recordLie): duplicates of those VMs that
	// involve that host are the lie's, counted apart, until the test says
	// the lie was corrected.
	lieHost string
	lieVMs  map[string]bool
	lied    []string // duplicates excused by the lie
}

// recordLie excuses, until the returned func is called, every duplicate
// of one of vms that involves host: a --confirm-fenced given while the
// host still ran them (the simulator's exemption of invariant 1, on real
// libvirt). The func returns the duplicates it excused.
func (u *uniquenessChecker) recordLie(host string, vms []string) func() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lieHost, u.lieVMs, u.lied = host, map[string]bool{}, nil
	for _, id := range vms {
		u.lieVMs[id] = true
	}
	return func() []string {
		u.mu.Lock()
		defer u.mu.Unlock()
		u.lieHost, u.lieVMs = "", nil
		return u.lied
	}
}

// excused reports whether a duplicate of uuid on the two hosts is the
// recorded lie's (and notes it).
func (u *uniquenessChecker) excused(uuid, a, b, line string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.lieHost == "" || !u.lieVMs[uuid] || (a != u.lieHost && b != u.lieHost) {
		return false
	}
	u.lied = append(u.lied, line)
	return true
}

// startUniquenessChecker starts polling hosts every 200 ms until check (or
// the test's cleanup) stops it.
func startUniquenessChecker(t *testing.T, hosts []*lab.Host) *uniquenessChecker {
	ctx, cancel := context.WithCancel(context.Background())
	u := &uniquenessChecker{hosts: hosts, interval: 200 * time.Millisecond, cancel: cancel, done: make(chan struct{})}
	go u.run(ctx)
	t.Cleanup(u.stop)
	return u
}

func (u *uniquenessChecker) run(ctx context.Context) {
	defer close(u.done)
	tick := time.NewTicker(u.interval)
	defer tick.Stop()
	for {
		u.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (u *uniquenessChecker) poll(ctx context.Context) {
	seen := make(map[string]string) // uuid → "host/pid"
	seenHost := make(map[string]string)
	var dups []string
	for _, h := range u.hosts {
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			u.mu.Lock()
			u.errs++
			u.lastErr = err
			u.mu.Unlock()
			return
		}
		for uuid, pid := range procs {
			where := fmt.Sprintf("%s/%d", h.Name, pid)
			if prev, ok := seen[uuid]; ok {
				if hand, states := u.handover(ctx, uuid); !hand {
					line := fmt.Sprintf("%s VM %s on %s and %s (libvirt: %s)", time.Now().Format("15:04:05.000"), uuid, prev, where, states)
					if !u.excused(uuid, seenHost[uuid], h.Name, line) {
						dups = append(dups, line)
					}
				}
			}
			seen[uuid], seenHost[uuid] = where, h.Name
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.polls++
	u.duplicates = append(u.duplicates, dups...)
	u.maxVMs = max(u.maxVMs, len(seen))
}

// handover reports whether a VM with qemu processes on two hosts is in
// libvirt's live-migration hand-over: one side paused for the migration
// (incoming on the destination, or migrated/post-copy on the source), so
// only one guest executes. Anything else is a duplicate.
func (u *uniquenessChecker) handover(ctx context.Context, uuid string) (bool, string) {
	active := 0
	var states []string
	for _, h := range u.hosts {
		out, err := h.Virsh(ctx, "domstate", "--reason", uuid)
		if err != nil {
			continue // not defined there
		}
		st := strings.TrimSpace(out)
		states = append(states, h.Name+": "+st)
		switch {
		case strings.HasPrefix(st, "running"):
			active++
		case strings.HasPrefix(st, "paused") && strings.Contains(st, "migrat"),
			strings.HasPrefix(st, "paused") && strings.Contains(st, "post-copy"),
			strings.HasPrefix(st, "paused") && strings.Contains(st, "starting up"),
			strings.HasPrefix(st, "shut off"):
		default:
			active++
		}
	}
	return active <= 1, strings.Join(states, ", ")
}

func (u *uniquenessChecker) stop() {
	u.cancel()
	<-u.done
}

// check stops the checker and fails t if it ever saw a VM on two hosts, or
// if it could not poll at all.
func (u *uniquenessChecker) check(t *testing.T) {
	t.Helper()
	u.stop()
	u.mu.Lock()
	defer u.mu.Unlock()
	t.Logf("uniqueness checker: %d polls of %d hosts, up to %d VMs at once, %d failed polls (last error: %v)",
		u.polls, len(u.hosts), u.maxVMs, u.errs, u.lastErr)
	if len(u.duplicates) > 0 {
		t.Errorf("a VM ran on two hosts at once (%d observations):\n%s", len(u.duplicates), strings.Join(u.duplicates, "\n"))
	}
	if u.polls == 0 {
		t.Errorf("uniqueness checker never completed a poll (last error: %v)", u.lastErr)
	}
}
