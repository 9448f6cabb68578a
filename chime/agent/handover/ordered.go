package handover

import (
	"context"
	"errors"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// Live migrations the servers order (on the source node): each runs in the
// background, holds its VM while it runs, and is reported to the servers.

// startMigration runs one ordered live migration in the background, once
// per task.
func (m *Manager) startMigration(vm api.DesiredVM) {
	order := *vm.Migrate
	key := order.TaskID + "/" + vm.ID
	m.mu.Lock()
	done := m.reported[key]
	m.mu.Unlock()
	if done || !m.claim(vm.ID, order.TaskID) {
		return
	}
	m.cfg.Trigger() // the reconciler now holds this VM
	finish := func() {
		m.mu.Lock()
		m.reported[key] = true
		m.mu.Unlock()
		m.release(vm.ID)
		m.cfg.Changed()
	}
	m.after(0, func() {
		rep, later := m.migrate(m.ctx, vm, order)
		if later {
			// Not attempted: the next desired state orders it again.
			m.release(vm.ID)
			return
		}
		m.report(m.ctx, rep, 0, finish)
	}, finish)
}

// migrate performs the migration and decides what to report: OK only on
// libvirt's word (its migrate call returned success), failed only when the
// domain still runs here, and unknown otherwise (uniqueness rule 8) — a
// domain absent here proves nothing about where it runs (a node-local
// migration may have taken it elsewhere, a lost reply may hide a failure
// or a success). The hand-over is recorded before libvirt is asked (no
// record, no migration), and settled after: retired whenever the domain
// no longer runs here (never started here again), cleared when it does.
//
// later is true when nothing was attempted and nothing is to be reported
// yet: the domain still carries the older generation it arrived with by an
// earlier migration (the reconciler has not rewritten its metadata), and
// migrated so, the destination would take it for a stale copy.
func (m *Manager) migrate(ctx context.Context, vm api.DesiredVM, order api.MigrationOrder) (rep api.MigrationReport, later bool) {
	log := m.log.Named("migrate").With("vm", vm.Name, "task", order.TaskID)
	rep = api.MigrationReport{TaskID: order.TaskID, VMID: vm.ID, Generation: vm.Generation}
	h := store.Handover{VMID: vm.ID, Generation: vm.Generation}
	here, err := m.domainHere(ctx, vm.ID)
	if err != nil {
		rep.Error = "list libvirt domains: " + err.Error()
		return rep, false // nothing was attempted: failed
	}
	if here == nil {
		rep.Unknown = true
		rep.Error = "the domain is not on the source node: where it runs is for the destination to prove"
		log.Warn("ordered to migrate a VM whose domain is not here: reporting its outcome unknown; it is never started here again")
		_ = m.retire(h) // a failure is logged, held in memory and retried: it does not run here either way
		return rep, false
	}
	if here.Meta != nil && here.Meta.Generation != vm.Generation && here.Meta.Generation == vm.AdoptGeneration {
		log.Info("the domain still carries the generation it arrived with: migrating once the reconciler has adopted it",
			"domain_generation", here.Meta.Generation, "generation", vm.Generation)
		return rep, true
	}
	if here.State != hypervisor.StateRunning {
		rep.Error = "vm is not running here (" + here.State + "): nothing to live-migrate"
		return rep, false
	}
	if err := m.cfg.Store.BeginHandover(h); err != nil {
		rep.Error = "not migrated: " + err.Error()
		log.Error("cannot record the hand-over: not migrating; the VM keeps running here", "error", err)
		return rep, false
	}
	start := m.cfg.Clock.Now()
	log.Info("live migration starting", "dest", order.DestURI, "migrate_uri", order.MigrateURI)
	err = m.cfg.Hypervisor.Migrate(ctx, vm.ID, order.DestURI, order.MigrateURI)
	if err == nil {
		_ = m.retire(h) // see above
		rep.OK = true
		log.Info("live migration done", "took", m.cfg.Clock.Now().Sub(start).Round(time.Millisecond).String())
		return rep, false
	}
	rep.Error = err.Error()
	switch d, lerr := m.domainHere(ctx, vm.ID); {
	case lerr != nil:
		// Whether it left is unknown: the open hand-over record keeps the
		// VM held here until a later desired state settles the record.
		rep.Unknown = true
		log.Error("live migration failed and libvirt cannot be listed: outcome unknown, the VM is held", "error", err, "list_error", lerr)
	case stillRunsHere(d):
		log.Error("live migration failed; the VM keeps running here", "error", err)
		m.abort(h)
	default:
		rep.Unknown = true
		_ = m.retire(h)
		log.Warn("migration call failed and the domain no longer runs here: outcome unknown, for the destination to prove", "error", err)
	}
	return rep, false
}

// stillRunsHere reports whether d (nil: not listed) has a qemu here: the
// evidence that a migration did not hand it over. A domain shut off here
// (for example "shut off (migrated)") may run elsewhere.
func stillRunsHere(d *hypervisor.Domain) bool {
	return d != nil && d.State != hypervisor.StateStopped && d.State != hypervisor.StateCrashed
}

// abort clears the record of a hand-over that did not happen. If that
// fails the VM stays held (left alone: the safe side) until a later
// desired state settles the record.
func (m *Manager) abort(h store.Handover) {
	if err := m.cfg.Store.AbortHandover(h.VMID, h.Generation); err != nil {
		m.log.Error("cannot clear the hand-over record; the VM stays held until it is cleared", "vm", h.VMID, "error", err)
	}
}

// report tells the servers, retrying with back-off while they are
// unreachable (at most 100 attempts), then calls done. The VM stays held
// until then.
func (m *Manager) report(ctx context.Context, rep api.MigrationReport, attempt int, done func()) {
	rep.Error = api.Truncate(rep.Error, api.MaxErrorLen) // the servers refuse longer ones
	if m.cfg.Reporter == nil || ctx.Err() != nil || attempt >= 100 {
		done()
		return
	}
	err := m.cfg.Reporter.ReportMigration(ctx, rep)
	if err == nil {
		done()
		return
	}
	if errors.Is(err, structs.ErrForbidden) || errors.Is(err, structs.ErrNotFound) || errors.Is(err, structs.ErrInvalid) {
		m.log.Warn("servers refused the migration report", "vm", rep.VMID, "error", err)
		done()
		return
	}
	m.after(clock.Backoff(attempt), func() { m.report(ctx, rep, attempt+1, done) }, done)
}
