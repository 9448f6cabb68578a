package agent

import (
	"context"
	"errors"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/api"
)

// watchDesired follows the node's desired state with blocking queries,
// persisting each new state and triggering the reconciler.
func (a *Agent) watchDesired(ctx context.Context) {
	log := a.logger.Named("desired")
	for attempt := 0; ctx.Err() == nil; {
		err := a.sync(ctx, api.QueryOptions{Index: a.desiredIndex(), Wait: desiredWait})
		var perr persistError
		switch {
		case err == nil:
			attempt = 0
		case ctx.Err() != nil:
			return
		case errors.As(err, &perr):
			attempt = 0
			log.Error("cannot persist desired state", "error", perr.err)
			if !clock.Sleep(ctx, a.clock, clock.Backoff(0)) {
				return
			}
		default:
			if RegistrationLost(err) {
				log.Warn("servers do not accept this node's credentials; registering again", "error", err)
				if a.register(ctx) != nil {
					return
				}
			}
			d := clock.Backoff(attempt)
			attempt++
			log.Warn("desired-state query failed; keeping the last one", "error", err, "retry_in", d.String())
			if !clock.Sleep(ctx, a.clock, d) {
				return
			}
		}
	}
}

// SyncOnce fetches the node's desired state once, without waiting for a
// change, and accepts it when it is newer than the last one accepted:
// fencing rule, persisted, the HA side effects run (hand-overs settled,
// ordered migrations scheduled, a released drain cleared), a reconcile pass
// requested. The first SyncOnce that succeeds is what lets the reconciler
// start anything. An error the servers answered with is returned as is
// (RegistrationLost tells whether to register again); a desired state that
// cannot be persisted is an error too, and the last accepted one stays.
func (a *Agent) SyncOnce(ctx context.Context) error {
	return a.sync(ctx, api.QueryOptions{})
}

// sync is one desired-state query with q (blocking when q.Index is set),
// then the acceptance of a new state.
func (a *Agent) sync(ctx context.Context, q api.QueryOptions) error {
	ds, err := a.servers.Desired(ctx, q)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	a.noteContact(err)
	if err != nil {
		return err
	}
	if last := a.desiredIndex(); last != 0 && ds.Index <= last {
		a.noteSynced()
		return nil // wait expired, or a lagging server answered: nothing new
	}
	if err := a.acceptDesired(ctx, *ds); err != nil {
		return persistError{err}
	}
	a.noteSynced()
	return nil
}

// persistError is a desired state received but not persisted.
type persistError struct{ err error }

func (e persistError) Error() string { return "persist desired state: " + e.err.Error() }
func (e persistError) Unwrap() error { return e.err }

// desiredIndex is the index of the last accepted desired state (0: none
// yet in this process).
func (a *Agent) desiredIndex() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.desired == nil {
		return 0
	}
	return a.desired.Index
}

// acceptDesired applies the fencing rule, persists the state, runs the HA
// side effects and triggers a reconcile pass.
func (a *Agent) acceptDesired(ctx context.Context, ds api.DesiredState) error {
	accepted, refused, hold, err := a.store.AcceptDesired(ds)
	if err != nil {
		return err
	}
	for _, vm := range refused {
		seen, err := a.store.SeenGeneration(vm.ID)
		if err != nil {
			a.logger.Warn("refusing instruction with an older generation", "vm", vm.ID, "generation", vm.Generation, "seen_error", err)
			continue
		}
		a.logger.Warn("refusing instruction with an older generation", "vm", vm.ID, "generation", vm.Generation, "seen", seen)
	}
	a.mu.Lock()
	first := a.desired == nil
	a.desired = &accepted
	a.hold = hold
	a.mu.Unlock()
	if first {
		a.logger.Info("first sync with the servers", "index", accepted.Index, "vms", len(accepted.VMs))
	} else {
		a.logger.Debug("desired state changed", "index", accepted.Index, "vms", len(accepted.VMs))
	}
	a.ops.AfterDesired(ctx, accepted)
	a.rec.Trigger()
	return nil
}
