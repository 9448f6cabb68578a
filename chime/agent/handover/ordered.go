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
		rep := m.migrate(m.ctx, vm, order)
		m.report(m.ctx, rep, 0, finish)
	}, finish)
}

// migrate performs the migration and decides what to report. The
// hand-over is recorded before libvirt is asked (no record, no migration),
// and settled after: retired when the domain left (libvirt undefines the
// source only on success, so its absence after an error means it left as
// well), cleared when it is still here.
func (m *Manager) migrate(ctx context.Context, vm api.DesiredVM, order api.MigrationOrder) api.MigrationReport {
	log := m.log.Named("migrate").With("vm", vm.Name, "task", order.TaskID)
	rep := api.MigrationReport{TaskID: order.TaskID, VMID: vm.ID, Generation: vm.Generation}
	h := store.Handover{VMID: vm.ID, Generation: vm.Generation}
	here, err := m.domainHere(ctx, vm.ID)
	if err != nil {
		rep.Error = "list libvirt domains: " + err.Error()
		return rep
	}
	if here == nil {
		retired, err := m.cfg.Store.Retired()
		if err != nil {
			rep.Error = "read the retired generations: " + err.Error()
			log.Error("cannot read the fencing records", "error", err)
			return rep
		}
		rep.OK = true
		if retired[vm.ID] >= vm.Generation {
			return rep // migrated before a restart; report again
		}
		log.Warn("ordered to migrate a VM whose domain is not here: it left with a migration")
		_ = m.retire(h) // a failure is logged, held in memory and retried: the domain is gone either way
		return rep
	}
	if here.State != hypervisor.StateRunning {
		rep.Error = "vm is not running here (" + here.State + "): nothing to live-migrate"
		return rep
	}
	if err := m.cfg.Store.BeginHandover(h); err != nil {
		rep.Error = "not migrated: " + err.Error()
		log.Error("cannot record the hand-over: not migrating; the VM keeps running here", "error", err)
		return rep
	}
	start := m.cfg.Clock.Now()
	log.Info("live migration starting", "dest", order.DestURI, "migrate_uri", order.MigrateURI)
	err = m.cfg.Hypervisor.Migrate(ctx, vm.ID, order.DestURI, order.MigrateURI)
	if err == nil {
		_ = m.retire(h) // see above
		rep.OK = true
		log.Info("live migration done", "took", m.cfg.Clock.Now().Sub(start).Round(time.Millisecond).String())
		return rep
	}
	rep.Error = err.Error()
	switch d, lerr := m.domainHere(ctx, vm.ID); {
	case lerr != nil:
		// Whether it left is unknown: the open hand-over record keeps the
		// VM held until a later desired state settles it.
		log.Error("live migration failed and libvirt cannot be listed; the VM is held until it can be", "error", err, "list_error", lerr)
	case d == nil:
		_ = m.retire(h)
		rep.OK, rep.Error = true, ""
		log.Warn("migration call failed but the domain left this node", "error", err)
	default:
		log.Error("live migration failed; the VM keeps running here", "error", err)
		m.abort(h)
	}
	return rep
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
