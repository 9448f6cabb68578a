package agent

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/structs"
)

// The agent's units of work besides RegisterOnce, SyncOnce and
// HeartbeatOnce. Run's goroutines call them on their timers; a caller that
// steps the agent (the simulator) calls them one at a time, and with
// WithClock(a manual clock) and WithInlineShutdowns none of them leaves a
// goroutine behind. Background work of the HA operations (ordered
// migrations, retries) is set on the clock and runs when it is advanced.

// Requests are what the agent asked of its drivers since the last
// TakeRequests.
type Requests struct {
	Reconcile bool // a reconcile pass: a trigger, or a libvirt event calling for one
	Heartbeat bool // an early heartbeat: libvirt, a hold or the health faults changed
}

// TakeRequests takes, without blocking, the pending reconcile trigger, the
// queued libvirt events (noting crashes, as Run's reconciler does) and the
// pending early-heartbeat request. Only a caller that steps the agent uses
// it: under Run, the loops take these.
func (a *Agent) TakeRequests() Requests {
	r := Requests{Reconcile: a.rec.TakeTrigger()}
	select {
	case <-a.heartbeatNow:
		r.Heartbeat = true
	default:
	}
	return r
}

// ReconcileOnce runs one reconcile pass (reconcile.Reconciler.Step): before
// the first successful SyncOnce it returns reconcile.ErrNotSynced and
// touches nothing.
func (a *Agent) ReconcileOnce(ctx context.Context) (reconcile.PassResult, error) {
	return a.rec.Step(ctx)
}

// HealthOnce runs one round of the business and storage probes and asks
// for an early heartbeat when the fault set changed. It waits for the
// storage probes, or for their timeout on the agent's clock.
func (a *Agent) HealthOnce(ctx context.Context) { a.health.Check(ctx) }

// Adopt records an adoption another agent announced before a node-local
// migration to this node (what POST /v1/adopt does), then sends a
// heartbeat before it answers: the servers learn of the migration from
// this end before it starts, and hold the VM (no rebuild of the source
// starts it elsewhere) until its outcome is known (uniqueness rule 7).
// That heartbeat is best effort: with this node's management network down
// the source's migration log tells the servers instead.
func (a *Agent) Adopt(ctx context.Context, ad store.Adoption) error {
	if a.isolated() {
		// An incoming migration would start a qemu here: an isolated
		// agent starts nothing (the servers may restart it elsewhere).
		return structs.Conflict("node_id", "node %s is isolated (no heartbeat acknowledged for its isolation lease): it accepts no incoming migration", a.cfg.Name)
	}
	if err := a.ops.Adopt(ad); err != nil {
		return err
	}
	a.mu.Lock()
	cut := a.contactErr != nil
	a.mu.Unlock()
	if cut {
		// The servers did not answer the last request: do not keep the
		// source waiting for a heartbeat that would time out.
		a.logger.Named("heartbeat").Warn("servers unreachable: the announced node-local migration is reported with the next heartbeat", "vm", ad.Name)
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := a.HeartbeatOnce(hctx); err != nil {
		a.logger.Named("heartbeat").Warn("cannot tell the servers of the announced node-local migration now; the next heartbeat does", "vm", ad.Name, "error", err)
	}
	return nil
}

// Drain is `chime agent drain` as the local socket runs it: it sets the
// local drain flag and waits (bounded, on the agent's clock) until no
// chime VM runs. A caller that must not block uses BeginDrain and
// DrainProgress instead.
func (a *Agent) Drain(ctx context.Context) (local.DrainResult, error) {
	res, err := a.ops.Drain(ctx)
	return local.DrainResult(res), err
}

// BeginDrain sets the local drain flag and asks for the pass that stops
// the VMs (before the first sync it stops them directly); it returns the
// drain's id.
func (a *Agent) BeginDrain(ctx context.Context) (string, error) { return a.ops.BeginDrain(ctx) }

// DrainProgress is one round of the drain's wait: which chime VMs still
// run and which are stopped.
func (a *Agent) DrainProgress(ctx context.Context) (local.DrainResult, error) {
	res, err := a.ops.DrainProgress(ctx)
	return local.DrainResult(res), err
}

// Migrate is `chime agent migrate` as the local socket runs it: node-local
// live migrations to another agent, each announced to it first.
func (a *Agent) Migrate(ctx context.Context, req local.MigrateRequest) ([]local.MigrateResult, error) {
	res, err := a.ops.Migrate(ctx, handover.MigrateRequest(req))
	if err != nil {
		return nil, err
	}
	out := make([]local.MigrateResult, len(res))
	for i, r := range res {
		out[i] = local.MigrateResult(r)
	}
	return out, nil
}
