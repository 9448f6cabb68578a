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
// and wait lease × 1.5 + M (structs.LeaseDeadline), M their margin
// (--isolation-lease-margin, learned from every answer: api.Timing). The
// agent promises to have every VM stopped within its stop bound B
// (--isolation-stop-bound) after its lease ran out, and the servers count
// the lease only if B ≤ M: lease + B comes before lease × 1.5 + M. The
// agent's stop budget D = min(B, M) (B until it learned M) sizes its
// lease check (every D/4 at most) and the time its stop pass may take: an
// agent that has not stopped every VM D after its lease ran out logs an
// error and reports the fault faultStopOverrun; one that learns M < B
// logs an error (the servers do not count its lease then, and the leader
// raises the alarm HALeaseNotCounted).
//
// A watchdog (--watchdog, Linux /dev/watchdog or softdog) covers the agent
// that cannot act: it is armed at the first acknowledged heartbeat of the
// process (whose answer carries M: structs.DefaultLeaseMargin from servers
// that predate it) and petted only while the lease is valid, with a
// timeout W = lease/4 + M/2, reset whenever M changes, so a hung or dead
// agent's host resets at the latest W after the lease ran out: lease + W
// ≤ lease × 1.5 + M, before the servers' deadline. A restarted agent has a
// start lease S = min(lease/4 + B/2, lease) before its first
// acknowledgement, and starts petting only with one: its predecessor's
// watchdog (a killed process leaves it armed) fires W after the last pet
// unless the servers heard the new process, and W + S ≤ lease/2 + (M +
// B)/2 ≤ lease/2 + M (as B ≤ M) keeps the new process's own deadline
// before the servers' as well. With the defaults (B = M = 10 s) these are
// the lease/4 + 5 s of before the margin was configurable.

// Watchdog is a watchdog device: the first Pet arms it, each Pet resets
// its timer; Close disarms it (the magic close) on a clean shutdown. The
// timeout is the device's (WatchdogTimeout).
type Watchdog interface {
	Pet(timeout time.Duration) error
	Close() error
}

// Faults of the isolation lease, reported in every heartbeat while they hold.
// (A stop bound above the servers' margin is no fault: the node works,
// only its lease is not counted; the leader raises HALeaseNotCounted.)
const faultStopOverrun = "isolation stop overran its budget: VMs may still run after the lease ran out"

// WatchdogTimeout is the watchdog timeout for an isolation lease and the
// servers' margin: lease/4 + margin/2 (see above).
func WatchdogTimeout(lease, margin time.Duration) time.Duration { return lease/4 + margin/2 }

// startLease is the lease a freshly started agent has before its first
// acknowledged heartbeat: lease/4 + bound/2, at most the lease.
func startLease(lease, bound time.Duration) time.Duration { return min(lease/4+bound/2, lease) }

// IsolationCheckEvery is the period of the lease check for a lease, a stop
// bound and the servers' margin: often enough that the watchdog is petted
// three times per timeout and four checks fit in the stop budget, at most
// a second, at least 100 ms.
func IsolationCheckEvery(lease, bound, margin time.Duration) time.Duration {
	return max(min(WatchdogTimeout(lease, margin)/3, StopBudget(bound, margin)/4, time.Second), 100*time.Millisecond)
}

// StopBudget is the time an agent with stop bound B allows itself to stop
// its VMs once its lease ran out, given the servers' margin M (0: not
// learned yet): min(B, M).
func StopBudget(bound, margin time.Duration) time.Duration {
	if margin > 0 && margin < bound {
		return margin
	}
	return bound
}

// stopBudget is StopBudget with this agent's bound and the margin of the
// servers' last answer.
func (a *Agent) stopBudget() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return StopBudget(a.cfg.stopBound(), a.timing.LeaseMargin)
}

// leaseMargin is the servers' margin of their last answer
// (structs.DefaultLeaseMargin before one, and from servers that predate it).
func (a *Agent) leaseMargin() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timing.LeaseMargin <= 0 {
		return structs.DefaultLeaseMargin
	}
	return a.timing.LeaseMargin
}

// noteMargin checks the servers' margin of an answer against the stop
// bound (with the lock held): an agent that may need longer than the
// margin logs it once per margin and reports faultStopBound.
func (a *Agent) noteMarginLocked(margin time.Duration) {
	if !a.isolationStop() || margin <= 0 || margin == a.marginSeen {
		return
	}
	a.marginSeen = margin
	a.boundExceeds = a.cfg.stopBound() > margin
	if a.boundExceeds {
		a.logger.Named("isolation").Error("the servers' isolation lease margin is shorter than this agent's stop bound: they will not count its lease (only a fence or a drain restarts its VMs elsewhere); lower --isolation-stop-bound or raise their --isolation-lease-margin",
			"stop_bound", a.cfg.stopBound().String(), "margin", margin.String())
	}
}

// isolationFaults are the lease's faults for a heartbeat.
func (a *Agent) isolationFaults() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	if a.stopOverrun {
		out = append(out, faultStopOverrun)
	}
	return out
}

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
	budget := a.stopBudget()
	a.mu.Lock()
	expired := a.leaseExpiredLocked(now)
	first := expired && !a.isolatedFlag
	if expired {
		a.isolatedFlag = true
	}
	if !expired {
		a.stopped, a.stopOverrun = false, false
	}
	leaseEnd, stoppedBefore := a.leaseUntil, a.stopped
	a.mu.Unlock()
	stopped := false
	log := a.logger.Named("isolation")
	if first {
		log.Warn("isolated: no heartbeat acknowledged for the isolation lease; stopping every VM and starting none",
			"lease", a.cfg.IsolationLease.String(), "stop_budget", budget.String())
	}
	if expired {
		// A pass now, not on the reconciler's next wake-up: before the
		// first sync too, whatever its loop is doing; and again at every
		// check while isolated. While each pass kills every chime domain,
		// the isolated agent keeps petting the watchdog: nothing runs,
		// and it starts nothing while isolated. The pass may take what is
		// left of the stop budget, at least one check period.
		left := max(leaseEnd.Add(budget).Sub(now), a.isolationCheckEvery())
		pctx, cancel := context.WithTimeout(ctx, left)
		_, err := a.rec.Pass(pctx)
		cancel()
		end := a.clock.Now()
		if err != nil {
			log.Error("isolation stop pass failed; retried in a moment (the watchdog is not petted meanwhile)", "error", err)
		} else {
			stopped = a.leaseExpired(end)
		}
		if !stoppedBefore && !stopped && !end.Before(leaseEnd.Add(budget)) {
			a.mu.Lock()
			overrun := !a.stopOverrun
			a.stopOverrun = true
			a.mu.Unlock()
			if overrun {
				log.Error("isolation stop overran its budget: VMs may still run when the servers' lease deadline passes (the watchdog, if any, resets the host)",
					"stop_budget", budget.String(), "since_lease_end", end.Sub(leaseEnd).String())
			}
		}
		if stopped && !stoppedBefore {
			log.Info("isolation stop done: no chime VM runs", "since_lease_end", end.Sub(leaseEnd).String(), "stop_budget", budget.String())
		}
		a.mu.Lock()
		a.stopped = a.stopped || stopped
		a.mu.Unlock()
	}
	a.mu.Lock()
	pet := (!expired && a.acked) || (expired && stopped)
	a.mu.Unlock()
	if pet && a.watchdog != nil {
		if err := a.watchdog.Pet(WatchdogTimeout(a.cfg.IsolationLease, a.leaseMargin())); err != nil {
			a.logger.Named("isolation").Error("watchdog pet failed", "error", err)
		}
	}
}

// isolationCheckEvery is the period of IsolationOnce (IsolationCheckEvery
// with the agent's stop bound and the margin known when the loop starts).
func (a *Agent) isolationCheckEvery() time.Duration {
	return IsolationCheckEvery(a.cfg.IsolationLease, a.cfg.stopBound(), a.leaseMargin())
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
			"timeout", WatchdogTimeout(a.cfg.IsolationLease, a.leaseMargin()).String(), "list_error", err)
		return
	}
	if err := a.watchdog.Close(); err != nil {
		log.Warn("watchdog close failed: the host may reset", "error", err)
	}
}
