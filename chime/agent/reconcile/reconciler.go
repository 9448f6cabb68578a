package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/hypervisor"
	"github.com/hashicorp/go-hclog"
)

// DefaultSweepInterval is the period of the full reconcile pass that runs
// even when nothing triggered one.
const DefaultSweepInterval = 10 * time.Second

// Hypervisor is the part of the libvirt driver the reconciler calls;
// *hypervisor.Driver implements it. Calls may block for the driver's call
// timeout; List returns every domain, chime's or not. Events delivers
// lifecycle events and connection changes.
type Hypervisor interface {
	List(ctx context.Context) ([]hypervisor.Domain, error)
	Define(ctx context.Context, spec hypervisor.DomainSpec) error
	Start(ctx context.Context, uuid string) error
	Shutdown(ctx context.Context, uuid string, grace time.Duration) error
	Destroy(ctx context.Context, uuid string) error
	Undefine(ctx context.Context, uuid string) error
	Events() <-chan hypervisor.Event
}

// Definitions persists the spec last defined in libvirt per VM, across
// restarts (the driver's Domain does not carry the spec, so a change is
// detected against this record). *store.Store implements it.
type Definitions interface {
	DefinedSpecs() (map[string]hypervisor.DomainSpec, error)
	SetDefined(spec hypervisor.DomainSpec) error
	ForgetDefined(vmID string) error
}

// Clock is the reconciler's time: Now stamps passes and measures restart
// times, NewTicker drives the periodic sweep. Tests and the simulator pass
// a clock.Manual to step passes in simulated time.
type Clock interface {
	Now() time.Time
	NewTicker(d time.Duration) clock.Ticker
}

// Retry delays of a start that libvirt refused because a disk is locked
// by another qemu (hypervisor.ErrDiskLocked): the lock frees only when the
// other copy stops, so passes in between (sweeps, events of other domains,
// desired-state changes) do not try again. 5 s doubling to 1 min.
const (
	lockRetryBase = 5 * time.Second
	lockRetryMax  = time.Minute
)

// lockRetryDelay is the wait after the attempts-th refusal in a row.
func lockRetryDelay(attempts int) time.Duration {
	return min(lockRetryBase<<min(max(attempts-1, 0), 8), lockRetryMax)
}

// StartRefusal is a VM whose start libvirt refused because one of its disks
// is locked by another qemu: on shared storage, the disk runs on another
// host. The reconciler retries it at NextTry, not on every pass.
type StartRefusal struct {
	Error    string    // libvirt's error of the last attempt
	Since    time.Time // first refusal of this run of refusals
	Attempts int       // refusals in a row
	NextTry  time.Time // no start before then
}

// ErrNotSynced is returned by a pass before the agent's first successful
// sync with the servers: until then nothing is started (uniqueness rule 1).
// The Inputs function returns it.
var ErrNotSynced = errors.New("no successful sync with the servers yet: starting nothing")

// ErrInputs wraps any other error of the Inputs function: the pass changes
// nothing, since a hold it cannot read may be what keeps a VM from starting.
var ErrInputs = errors.New("reconcile inputs unavailable: changing nothing")

// Inputs are what a reconcile pass works towards besides libvirt's state.
type Inputs struct {
	Desired []api.DesiredVM
	Drained bool
	Hold    []string
	// Isolated: the isolation lease expired; see PlanOptions.Isolated.
	// Desired may then be empty (no sync yet).
	Isolated bool
}

// Config wires a Reconciler.
type Config struct {
	Hypervisor  Hypervisor
	Definitions Definitions
	// Inputs returns the current inputs. It returns ErrNotSynced until the
	// first successful sync with the servers, and any other error when an
	// input (a fencing record behind a hold) cannot be read; either way the
	// pass does nothing.
	Inputs        func() (Inputs, error)
	SweepInterval time.Duration // default DefaultSweepInterval
	ShutdownGrace time.Duration
	Clock         Clock // nil: the wall clock
	// ShutdownInline runs guest shutdowns inside the pass instead of in
	// the background. Production never sets it (a shutdown may take the
	// whole grace period and would hold up the restart of crashed VMs);
	// the simulator does, so that a pass starts no goroutine.
	ShutdownInline bool
	Logger         hclog.Logger
	// Changed, when set, is called after a pass that changed libvirt (the
	// agent sends an early heartbeat so the servers see the new state soon).
	Changed func()
}

// PassResult is what one reconcile pass did.
type PassResult struct {
	Domains     []hypervisor.Domain // libvirt's domains as listed at the start of the pass
	Actions     []Action            // the plan
	Failed      map[int]error       // index into Actions -> error
	StaleFailed bool                // a stale destroy/undefine failed: nothing was defined or started
	// Restarted is, per VM started again after a crash in this pass, the
	// time from the crash first seen to the start (also logged as
	// restart_time: the figure behind the availability promise).
	Restarted map[string]time.Duration
}

// Reconciler drives libvirt towards the desired VMs. It is level-triggered:
// every trigger (desired change, libvirt event, reconnect, sweep) leads to one
// full pass over all domains, and triggers arriving during a pass coalesce
// into the next one. The decision is Plan; this type only feeds it and
// carries out its steps.
type Reconciler struct {
	hv      Hypervisor
	defs    Definitions
	inputs  func() (Inputs, error)
	sweep   time.Duration
	grace   time.Duration
	inline  bool // ShutdownInline
	clock   Clock
	logger  hclog.Logger
	changed func()

	passMu sync.Mutex // one pass at a time: Run's, and the agent's own before a heartbeat after a partition

	trigger chan struct{} // capacity 1: pending trigger, coalesced
	settled chan struct{} // closed after the first pass with every stale step done
	once    sync.Once
	wg      sync.WaitGroup // asynchronous shutdowns

	mu           sync.Mutex
	defined      map[string]hypervisor.DomainSpec // spec last defined per VM id
	crashedAt    map[string]time.Time             // VM id -> when its crash was first seen (restart-time measurement)
	shuttingDown map[string]bool                  // VM ids with a shutdown in flight
	refused      map[string]StartRefusal          // VM id -> its start refused for a locked disk, until it starts or no longer should
	domains      []hypervisor.Domain              // as last listed
	lastPass     time.Time                        // end of the last pass
	lastErr      error                            // error of the last pass (nil: clean)
	destroyed    []DestroyedCopy                  // running stale copies destroyed, not yet reported (TakeDestroyed)
}

// DestroyedCopy is a running stale copy a pass destroyed: a uniqueness
// conflict the agent reports in its next heartbeat.
type DestroyedCopy struct {
	VMID       string
	Generation uint64
}

// maxDestroyed bounds the destroyed copies kept for the next heartbeat.
const maxDestroyed = 256

// Destroyed returns the running stale copies destroyed and not yet
// acknowledged (AckDestroyed), oldest first.
func (r *Reconciler) Destroyed() []DestroyedCopy {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.destroyed)
}

// AckDestroyed drops the first n destroyed copies (a heartbeat carrying
// them got through).
func (r *Reconciler) AckDestroyed(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.destroyed = r.destroyed[min(n, len(r.destroyed)):]
}

// New builds a reconciler; Run drives it, or a caller steps it with Pass.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Hypervisor == nil || cfg.Definitions == nil || cfg.Inputs == nil {
		return nil, errors.New("reconciler: hypervisor, definitions and inputs are required")
	}
	defined, err := cfg.Definitions.DefinedSpecs()
	if err != nil {
		return nil, fmt.Errorf("reconciler: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Wall{}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	return &Reconciler{
		hv: cfg.Hypervisor, defs: cfg.Definitions, inputs: cfg.Inputs,
		sweep: cfg.SweepInterval, grace: cfg.ShutdownGrace, inline: cfg.ShutdownInline, clock: cfg.Clock, logger: cfg.Logger, changed: cfg.Changed,
		trigger:      make(chan struct{}, 1),
		settled:      make(chan struct{}),
		defined:      defined,
		crashedAt:    map[string]time.Time{},
		shuttingDown: map[string]bool{},
		refused:      map[string]StartRefusal{},
	}, nil
}

// Trigger asks for a pass soon. It never blocks; triggers coalesce.
func (r *Reconciler) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Settled is closed once a pass has completed with every stale copy
// destroyed and undefined. The agent sends no heartbeat before that.
func (r *Reconciler) Settled() <-chan struct{} { return r.settled }

// Domains returns libvirt's domains as last listed, when the last pass
// ended, and its error.
func (r *Reconciler) Domains() ([]hypervisor.Domain, time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.domains), r.lastPass, r.lastErr
}

// StartRefusals returns, per VM id, the starts libvirt currently refuses
// because a disk is locked by another qemu (`chime agent status` shows them).
func (r *Reconciler) StartRefusals() map[string]StartRefusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.refused)
}

// Wait waits for the shutdowns started by passes to return.
func (r *Reconciler) Wait() { r.wg.Wait() }

// Run runs passes until ctx ends, then waits for in-flight shutdowns. Each
// wake-up (trigger, sweep tick, libvirt event) does what Step does.
func (r *Reconciler) Run(ctx context.Context) error {
	defer r.wg.Wait()
	ticker := r.clock.NewTicker(r.sweep)
	defer ticker.Stop()
	events := r.hv.Events()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.trigger:
		case <-ticker.C():
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !r.noteEvent(ev) {
				continue
			}
		}
		events, _ = r.coalesce(events)
		_, err := r.Pass(ctx)
		r.logPass(ctx, err)
	}
}

// Step is one unit of Run's work, for a caller that drives the reconciler
// itself (tests, the simulator): it takes the pending trigger and the
// queued libvirt events (noting crashes) without blocking, then runs one
// pass and logs its outcome as Run does. It starts no goroutine when the
// reconciler runs shutdowns inline.
func (r *Reconciler) Step(ctx context.Context) (PassResult, error) {
	r.coalesce(r.hv.Events())
	res, err := r.Pass(ctx)
	r.logPass(ctx, err)
	return res, err
}

// TakeTrigger takes the pending trigger and the queued libvirt events
// without blocking, and reports whether any of them calls for a pass. A
// caller that steps the reconciler asks it to decide when to Step.
func (r *Reconciler) TakeTrigger() bool {
	_, want := r.coalesce(r.hv.Events())
	return want
}

// coalesce takes, without blocking, whatever is already queued: the pending
// trigger and libvirt events. It returns events, nil once closed, and
// whether anything taken calls for a pass.
func (r *Reconciler) coalesce(events <-chan hypervisor.Event) (<-chan hypervisor.Event, bool) {
	want := false
	for {
		select {
		case <-r.trigger:
			want = true
		case ev, ok := <-events:
			if !ok {
				events = nil
			} else if r.noteEvent(ev) {
				want = true
			}
		default:
			return events, want
		}
	}
}

// logPass logs the outcome of a pass the way Run reports it.
func (r *Reconciler) logPass(ctx context.Context, err error) {
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.Is(err, ErrNotSynced):
		r.logger.Debug("reconcile skipped: waiting for the first sync with the servers")
	case errors.Is(err, ErrInputs):
		r.logger.Error("reconcile skipped: its inputs cannot be read; nothing is started or destroyed", "error", err)
	default:
		r.logger.Warn("reconcile pass failed; retrying on next trigger or sweep", "error", err)
	}
}

// noteEvent records what an event says and reports whether it calls for a pass.
func (r *Reconciler) noteEvent(ev hypervisor.Event) bool {
	switch ev.Kind {
	case hypervisor.EventDisconnected:
		r.logger.Warn("libvirt connection lost")
		return false
	case hypervisor.EventReconnected:
		r.logger.Info("libvirt reconnected: full reconcile")
		return true
	}
	crashed := ev.Detail == "crashed" || ev.Reason == "crashed" // "crashed" event, or "stopped" with reason "crashed"
	if crashed && ev.UUID != "" {
		at := ev.At
		if at.IsZero() {
			at = r.clock.Now()
		}
		r.mu.Lock()
		if _, ok := r.crashedAt[ev.UUID]; !ok {
			r.crashedAt[ev.UUID] = at
		}
		r.mu.Unlock()
		r.logger.Info("domain crashed", "vm", ev.UUID)
	} else {
		r.logger.Debug("libvirt event", "vm", ev.UUID, "detail", ev.Detail, "reason", ev.Reason)
	}
	return true
}

// Pass runs one reconcile pass now. It returns an error when nothing could
// be planned (no sync yet, inputs unreadable, libvirt unreachable) or when a
// step failed; failed steps are retried by the next pass.
func (r *Reconciler) Pass(ctx context.Context) (PassResult, error) {
	r.passMu.Lock()
	defer r.passMu.Unlock()
	in, err := r.inputs()
	if errors.Is(err, ErrNotSynced) {
		return PassResult{}, err
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrInputs, err)
		r.finish(nil, err)
		return PassResult{}, err
	}
	domains, err := r.hv.List(ctx)
	if err != nil {
		r.finish(nil, fmt.Errorf("list domains: %w", err))
		return PassResult{}, fmt.Errorf("list domains: %w", err)
	}
	r.mu.Lock()
	for _, d := range domains {
		if d.Meta != nil && d.State == hypervisor.StateCrashed {
			if _, seen := r.crashedAt[d.UUID]; !seen {
				r.crashedAt[d.UUID] = r.clock.Now()
			}
		}
	}
	opts := PlanOptions{Drained: in.Drained, Hold: in.Hold, Defined: maps.Clone(r.defined), Isolated: in.Isolated}
	r.mu.Unlock()

	res := PassResult{Domains: domains, Actions: Plan(in.Desired, domains, opts),
		Failed: map[int]error{}, Restarted: map[string]time.Duration{}}
	destroyFailed := map[string]bool{}
	for i, a := range res.Actions {
		if ctx.Err() != nil {
			break
		}
		if a.Kind == ActionUndefineStale && destroyFailed[a.VMID] {
			// Undefining a running domain would only make it transient:
			// its qemu would keep running, out of sight of the next List.
			res.Failed[i] = errors.New("skipped: destroy failed")
			continue
		}
		if res.StaleFailed && (a.Kind == ActionDefine || a.Kind == ActionStart) {
			// Uniqueness rule 2: nothing starts while a stale copy may still run.
			r.logger.Warn("skipped: a stale copy could not be removed", "action", a.Kind, "vm", a.VMID)
			res.Failed[i] = errors.New("skipped: stale copy not removed")
			continue
		}
		if err := r.execute(ctx, a, &res); err != nil {
			res.Failed[i] = err
			r.logger.Error("reconcile step failed", "action", a.Kind, "vm", a.VMID, "name", a.Name, "error", err)
			if a.Kind == ActionDestroyStale || a.Kind == ActionUndefineStale {
				res.StaleFailed = true
				destroyFailed[a.VMID] = a.Kind == ActionDestroyStale
			}
		}
	}
	r.forgetRefusals(res.Actions)
	var passErr error
	if len(res.Failed) > 0 {
		passErr = fmt.Errorf("%d of %d steps failed", len(res.Failed), len(res.Actions))
	}
	r.finish(domains, passErr)
	if r.changed != nil && slices.ContainsFunc(res.Actions, func(a Action) bool { return a.Kind != ActionConflict }) {
		r.changed()
	}
	if !res.StaleFailed && ctx.Err() == nil {
		r.once.Do(func() { close(r.settled) })
	}
	return res, passErr
}

func (r *Reconciler) finish(domains []hypervisor.Domain, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if domains != nil {
		r.domains = domains
	}
	r.lastPass = r.clock.Now()
	r.lastErr = err
}

// execute carries out one step of res's plan and logs it at INFO.
func (r *Reconciler) execute(ctx context.Context, a Action, res *PassResult) error {
	log := r.logger.With("vm", a.VMID, "name", a.Name, "generation", a.Generation, "reason", a.Reason)
	switch a.Kind {
	case ActionConflict:
		log.Warn("cannot reconcile vm")
		return nil
	case ActionDestroyStale:
		log.Info("destroying stale copy")
		if err := r.hv.Destroy(ctx, a.VMID); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			return fmt.Errorf("destroy stale %s: %w", a.VMID, err)
		}
		r.mu.Lock()
		if len(r.destroyed) < maxDestroyed {
			r.destroyed = append(r.destroyed, DestroyedCopy{VMID: a.VMID, Generation: a.Generation})
		}
		r.mu.Unlock()
	case ActionIsolate:
		log.Warn("isolated: killing the domain (isolation response stop)")
		if err := r.hv.Destroy(ctx, a.VMID); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			return fmt.Errorf("isolation stop of %s: %w", a.VMID, err)
		}
	case ActionUndefineStale:
		log.Info("undefining stale copy")
		if err := r.hv.Undefine(ctx, a.VMID); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			return fmt.Errorf("undefine stale %s: %w", a.VMID, err)
		}
		r.mu.Lock()
		delete(r.defined, a.VMID)
		r.mu.Unlock()
		if err := r.defs.ForgetDefined(a.VMID); err != nil {
			return fmt.Errorf("forget definition of %s: %w", a.VMID, err)
		}
	case ActionDefine:
		log.Info("defining domain")
		if err := r.hv.Define(ctx, *a.Spec); err != nil {
			return fmt.Errorf("define %s: %w", a.VMID, err)
		}
		r.mu.Lock()
		r.defined[a.VMID] = *a.Spec
		r.mu.Unlock()
		if err := r.defs.SetDefined(*a.Spec); err != nil {
			return fmt.Errorf("record definition of %s: %w", a.VMID, err)
		}
	case ActionStart:
		now := r.clock.Now()
		r.mu.Lock()
		ref, wasRefused := r.refused[a.VMID]
		r.mu.Unlock()
		if wasRefused && now.Before(ref.NextTry) {
			log.Debug("start waits: its disk was locked by another qemu", "next_try", ref.NextTry, "attempts", ref.Attempts)
			return nil
		}
		log.Info("starting domain")
		if err := r.hv.Start(ctx, a.VMID); err != nil {
			if errors.Is(err, hypervisor.ErrDiskLocked) {
				r.noteRefusal(log, a.VMID, err, now)
			}
			return fmt.Errorf("start %s: %w", a.VMID, err)
		}
		r.mu.Lock()
		delete(r.refused, a.VMID)
		crashed, ok := r.crashedAt[a.VMID]
		delete(r.crashedAt, a.VMID)
		r.mu.Unlock()
		if wasRefused {
			log.Info("domain started; its disk is no longer locked elsewhere", "refusals", ref.Attempts, "refused_for", now.Sub(ref.Since).String())
		}
		if ok {
			took := r.clock.Now().Sub(crashed)
			res.Restarted[a.VMID] = took
			log.Info("vm running again after crash", "restart_time", took.String())
		}
	case ActionShutdown:
		r.shutdownAsync(ctx, a, log)
	default:
		return fmt.Errorf("unknown action %q", a.Kind)
	}
	return nil
}

// noteRefusal records a start refused for a locked disk and when to try
// again. The first refusal of a run is an ERROR: a disk of this VM runs in
// another qemu, which on shared storage means on another host, and only an
// operator (or the other copy stopping) resolves it.
func (r *Reconciler) noteRefusal(log hclog.Logger, vmID string, err error, now time.Time) {
	r.mu.Lock()
	ref, ok := r.refused[vmID]
	if !ok {
		ref = StartRefusal{Since: now}
	}
	ref.Attempts++
	ref.Error = err.Error()
	ref.NextTry = now.Add(lockRetryDelay(ref.Attempts))
	r.refused[vmID] = ref
	r.mu.Unlock()
	if ref.Attempts == 1 {
		log.Error("start refused: a disk of the vm is locked by another qemu (running on another host?); not starting it until the lock frees",
			"error", err, "retry_in", lockRetryDelay(ref.Attempts).String())
		return
	}
	log.Warn("start still refused: disk locked by another qemu", "attempts", ref.Attempts,
		"refused_for", now.Sub(ref.Since).String(), "retry_in", lockRetryDelay(ref.Attempts).String())
}

// forgetRefusals drops the refusal records of VMs this pass no longer
// wants started (stopped, deleted, moved away, or running).
func (r *Reconciler) forgetRefusals(actions []Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.refused {
		if !slices.ContainsFunc(actions, func(a Action) bool { return a.Kind == ActionStart && a.VMID == id }) {
			delete(r.refused, id)
		}
	}
}

// shutdownAsync runs a guest shutdown in the background: it may take up to
// the grace period, and must not hold up restarts of crashed VMs. With
// ShutdownInline it runs it before returning instead.
func (r *Reconciler) shutdownAsync(ctx context.Context, a Action, log hclog.Logger) {
	r.mu.Lock()
	if r.shuttingDown[a.VMID] {
		r.mu.Unlock()
		return
	}
	r.shuttingDown[a.VMID] = true
	r.mu.Unlock()
	log.Info("shutting down domain", "grace", r.grace.String())
	if r.inline {
		r.shutdown(ctx, a, log)
		return
	}
	r.wg.Go(func() { r.shutdown(ctx, a, log) })
}

// shutdown shuts a guest down and asks for the pass that sees it stopped.
func (r *Reconciler) shutdown(ctx context.Context, a Action, log hclog.Logger) {
	err := r.hv.Shutdown(ctx, a.VMID, r.grace)
	r.mu.Lock()
	delete(r.shuttingDown, a.VMID)
	r.mu.Unlock()
	if err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		log.Error("shutdown failed; retrying next pass", "error", err)
		return
	}
	log.Info("domain shut down")
	if r.changed != nil {
		r.changed()
	}
	r.Trigger()
}
