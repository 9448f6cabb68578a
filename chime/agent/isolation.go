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
// that cannot act: it is petted only while the lease is valid, and its
// timeout is a quarter of the lease, so a hung or dead agent gets its host
// reset before the servers' deadline as well.

// Watchdog is a watchdog device: Pet resets its timer; Close disarms it
// (the magic close) on a clean shutdown. The timeout is set when it is
// opened (WatchdogTimeout).
type Watchdog interface {
	Pet() error
	Close() error
}

// WatchdogTimeout is the watchdog timeout for an isolation lease: a
// quarter of it, so that a hung agent's host resets before the servers'
// deadline even when a restarted agent starts with only a quarter lease
// (startLease).
func WatchdogTimeout(lease time.Duration) time.Duration { return max(lease/4, time.Second) }

// startLease is the lease a freshly started agent has before its first
// acknowledged heartbeat: a quarter of the lease. Its predecessor may have
// died with the lease almost spent and the watchdog about to fire; the
// new process's deadline must still come before the servers'.
func startLease(lease time.Duration) time.Duration { return lease / 4 }

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
	a.isolatedFlag = false
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

// IsolationOnce is one round of the lease check: when the lease has run
// out it logs the isolation once and asks for the pass that kills the
// VMs; while the lease is valid it pets the watchdog. Run calls it every
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
	if first {
		a.logger.Named("isolation").Warn("isolated: no heartbeat acknowledged for the isolation lease; stopping every VM and starting none",
			"lease", a.cfg.IsolationLease.String())
		a.rec.Trigger()
	}
	if !expired && a.watchdog != nil {
		if err := a.watchdog.Pet(); err != nil {
			a.logger.Named("isolation").Error("watchdog pet failed", "error", err)
		}
	}
}

// isolationCheckEvery is the period of IsolationOnce: often enough that
// the watchdog (a quarter lease) is petted three times per timeout.
func (a *Agent) isolationCheckEvery() time.Duration {
	return min(max(WatchdogTimeout(a.cfg.IsolationLease)/3, 100*time.Millisecond), time.Second)
}

// isolationLoop runs IsolationOnce until ctx ends, then disarms the
// watchdog (a clean stop).
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
			if a.watchdog != nil {
				if err := a.watchdog.Close(); err != nil {
					a.logger.Named("isolation").Warn("watchdog close failed: the host may reset", "error", err)
				}
			}
			return
		case <-t.C():
		}
	}
}
