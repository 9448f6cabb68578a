package agent

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// The agent's side of the isolation lease (DESIGN.md, "Isolation and
// fencing"). With --isolation-response stop the agent counts its lease
// from the moment it *sent* the last heartbeat a server acknowledged; once
// the lease has run out it kills every chime VM (reconcile.ActionIsolate)
// and starts none until a heartbeat is acknowledged again and a
// desired-state sync after that acknowledgement succeeded. The servers
// count from the moment they *received* that heartbeat, which is later,
// and wait lease × 1.5 + 10 s (structs.LeaseDeadline): the agent's
// deadline always comes first.
//
// A watchdog (--watchdog, Linux /dev/watchdog or softdog) covers the agent
// that cannot act: it is armed at the first acknowledged heartbeat of the
// process and petted only while the lease is valid, with a timeout W =
// lease/4 + 5 s, so a hung or dead agent's host resets at the latest W
// after the lease ran out: lease + W ≤ lease × 1.5 + 10 s, before the
// servers' deadline. A restarted agent has a start lease S ≤ lease/4 + 5 s
// before its first acknowledgement, and starts petting only with one: its
// predecessor's watchdog (a killed process leaves it armed) fires W after
// the last pet unless the servers heard the new process, and W + S ≤
// lease/2 + 10 s keeps the new process's own deadline before the servers'
// as well.

// Watchdog is a watchdog device: the first Pet arms it, each Pet resets
// its timer; Close disarms it (the magic close) on a clean shutdown. The
// timeout is the device's (WatchdogTimeout).
type Watchdog interface {
	Pet() error
	Close() error
}

// WatchdogTimeout is the watchdog timeout for an isolation lease: lease/4
// + 5 s (see above).
func WatchdogTimeout(lease time.Duration) time.Duration { return lease/4 + 5*time.Second }

// startLease is the lease a freshly started agent has before its first
// acknowledged heartbeat: lease/4 + 5 s, at most the lease.
func startLease(lease time.Duration) time.Duration { return min(lease/4+5*time.Second, lease) }

// isolationStop reports whether the agent runs with isolation response stop.
func (a *Agent) isolationStop() bool { return a.cfg.IsolationResponse == structs.IsolationStop }

// leaseExpired reports whether the lease has run out as of now.
func (a *Agent) leaseExpired(now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.leaseExpiredLocked(now)
}

func (a *Agent) leaseExpiredLocked(now time.Time) bool {
	return a.isolationStop() && !now.Before(a.leaseUntil)
}

// isolated reports whether the reconciler must keep every VM stopped: the
// lease ran out, or it did and no desired-state sync has succeeded since
// the acknowledgement that renewed it.
func (a *Agent) isolated() bool {
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.leaseExpiredLocked(now) || a.isolatedUntilSync
}

// Isolated reports whether the agent is isolated (status, tests).
func (a *Agent) Isolated() bool { return a.isolated() }

// noteAcked renews the lease after a heartbeat sent at sent was
// acknowledged. An agent that was isolated stays so until a sync after
// this acknowledgement: the servers may have moved its VMs meanwhile.
func (a *Agent) noteAcked(sent time.Time) {
	if !a.isolationStop() {
		return
	}
	a.mu.Lock()
	if a.leaseExpiredLocked(a.clock.Now()) || a.isolatedFlag {
		a.isolatedUntilSync = true
	}
	if until := sent.Add(a.cfg.IsolationLease); until.After(a.leaseUntil) {
		a.leaseUntil = until
	}
	a.isolatedFlag, a.acked = false, true
	a.mu.Unlock()
}

// endIsolation is called after a desired-state sync that began after the
// acknowledgement: the reconciler may start VMs again.
func (a *Agent) endIsolation(began time.Time) {
	a.mu.Lock()
	ended := a.isolatedUntilSync && !a.leaseExpiredLocked(began)
	if ended {
		a.isolatedUntilSync = false
	}
	a.mu.Unlock()
	if ended {
		a.logger.Named("isolation").Info("isolation over: heartbeat acknowledged and desired state synced; VMs placed here start again")
		a.rec.Trigger()
	}
}

// IsolationOnce is one round of the lease check: while the lease has run
// out it runs the pass that kills every VM (logging the isolation once);
// it pets the watchdog while the lease is valid (after the process's first
// acknowledgement), or while isolated once that pass succeeded. Run calls it every
// isolationCheckEvery; a caller that steps the agent calls it itself.
func (a *Agent) IsolationOnce(ctx context.Context) {
	if !a.isolationStop() {
		return
	}
	now := a.clock.Now()
	a.mu.Lock()
	expired := a.leaseExpiredLocked(now)
	first := expired && !a.isolatedFlag
	if expired {
		a.isolatedFlag = true
	}
	a.mu.Unlock()
	stopped := false
	if first {
		a.logger.Named("isolation").Warn("isolated: no heartbeat acknowledged for the isolation lease; stopping every VM and starting none",
			"lease", a.cfg.IsolationLease.String())
	}
	if expired {
		// A pass now, not on the reconciler's next wake-up: before the
		// first sync too, whatever its loop is doing; and again at every
		// check while isolated. While each pass kills every chime domain,
		// the isolated agent keeps petting the watchdog: nothing runs,
		// and it starts nothing while isolated.
		_, err := a.rec.Pass(ctx)
		if err != nil {
			a.logger.Named("isolation").Error("isolation stop pass failed; retried in a moment (the watchdog is not petted meanwhile)", "error", err)
		} else {
			stopped = a.leaseExpired(a.clock.Now())
		}
	}
	a.mu.Lock()
	pet := (!expired && a.acked) || (expired && stopped)
	a.mu.Unlock()
	if pet && a.watchdog != nil {
		if err := a.watchdog.Pet(); err != nil {
			a.logger.Named("isolation").Error("watchdog pet failed", "error", err)
		}
	}
}

// isolationCheckEvery is the period of IsolationOnce: at most a second,
// and often enough that the watchdog is petted three times per timeout.
func (a *Agent) isolationCheckEvery() time.Duration {
	return min(max(WatchdogTimeout(a.cfg.IsolationLease)/3, 100*time.Millisecond), time.Second)
}

// isolationLoop runs IsolationOnce until ctx ends, then stops the
// watchdog (stopWatchdog).
func (a *Agent) isolationLoop(ctx context.Context) {
	if !a.isolationStop() {
		return
	}
	t := a.clock.NewTicker(a.isolationCheckEvery())
	defer t.Stop()
	for {
		a.IsolationOnce(ctx)
		select {
		case <-ctx.Done():
			a.stopWatchdog()
			return
		case <-t.C():
		}
	}
}

// stopWatchdog is the clean stop's end of the watchdog: disarmed when no
// chime VM runs here; left armed otherwise, because the servers keep
// counting the lease against a stopped agent and would restart the VMs
// elsewhere while their qemus run on: an agent not back within the
// watchdog's timeout gets its host reset. Drain the node before stopping
// the agent for longer.
func (a *Agent) stopWatchdog() {
	if a.watchdog == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	domains, err := a.hv.List(ctx)
	running := err != nil
	for _, d := range domains {
		if d.Meta != nil && observedState(d.State) == structs.StateRunning {
			running = true
		}
	}
	log := a.logger.Named("isolation")
	if running {
		log.Warn("agent stopping with chime VMs running: the watchdog stays armed; start the agent again within its timeout or the host resets (drain the node first for maintenance)",
			"timeout", WatchdogTimeout(a.cfg.IsolationLease).String(), "list_error", err)
		return
	}
	if err := a.watchdog.Close(); err != nil {
		log.Warn("watchdog close failed: the host may reset", "error", err)
	}
}
