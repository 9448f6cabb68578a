package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/agenttest"
	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// memHV is a small in-memory libvirt: domains with states, and the calls
// made to it in order. It implements exactly the reconciler's Hypervisor.
type memHV struct {
	mu      sync.Mutex
	domains map[string]hypervisor.Domain
	calls   []string
	fail    map[string]error // "destroy <uuid>" -> error returned by that call
	events  chan hypervisor.Event
}

func newMemHV(domains ...hypervisor.Domain) *memHV {
	h := &memHV{domains: map[string]hypervisor.Domain{}, fail: map[string]error{}, events: make(chan hypervisor.Event, 8)}
	for _, d := range domains {
		h.domains[d.UUID] = d
	}
	return h
}

// call records a call and returns its injected failure, if any.
func (h *memHV) call(verb, id string) error {
	h.calls = append(h.calls, verb+" "+id[:1])
	return h.fail[verb+" "+id]
}

func (h *memHV) Events() <-chan hypervisor.Event { return h.events }

func (h *memHV) List(context.Context) ([]hypervisor.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := slices.Collect(maps.Values(h.domains))
	slices.SortFunc(out, func(a, b hypervisor.Domain) int { return strings.Compare(a.UUID, b.UUID) })
	return out, nil
}

func (h *memHV) Define(_ context.Context, s hypervisor.DomainSpec) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("define", s.VMID); err != nil {
		return err
	}
	d, ok := h.domains[s.VMID]
	if !ok {
		d = hypervisor.Domain{UUID: s.VMID, State: hypervisor.StateStopped}
	}
	d.Name, d.Meta = hypervisor.DomainName(s.Name), &hypervisor.Meta{VMID: s.VMID, Generation: s.Generation}
	h.domains[s.VMID] = d
	return nil
}

func (h *memHV) transition(verb, id string, from []string, to string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call(verb, id); err != nil {
		return err
	}
	d, ok := h.domains[id]
	if !ok {
		return fmt.Errorf("%s %s: %w", verb, id, hypervisor.ErrNotFound)
	}
	if !slices.Contains(from, d.State) {
		return fmt.Errorf("%s %s: domain is %s", verb, id, d.State)
	}
	d.State = to
	h.domains[id] = d
	return nil
}

func (h *memHV) Start(_ context.Context, id string) error {
	return h.transition("start", id, []string{hypervisor.StateStopped, hypervisor.StateCrashed}, hypervisor.StateRunning)
}

func (h *memHV) Shutdown(_ context.Context, id string, _ time.Duration) error {
	return h.transition("shutdown", id, []string{hypervisor.StateRunning}, hypervisor.StateStopped)
}

func (h *memHV) Destroy(_ context.Context, id string) error {
	return h.transition("destroy", id, []string{hypervisor.StateRunning, hypervisor.StateOther}, hypervisor.StateStopped)
}

func (h *memHV) Undefine(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("undefine", id); err != nil {
		return err
	}
	if d, ok := h.domains[id]; ok && qemuMayRun(d.State) {
		return fmt.Errorf("undefine %s: domain is %s (it would turn transient)", id, d.State)
	}
	delete(h.domains, id)
	return nil
}

func (h *memHV) snapshot() (calls []string, states map[string]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	states = map[string]string{}
	for id, d := range h.domains {
		states[id[:1]] = d.State
	}
	return slices.Clone(h.calls), states
}

// memDefs keeps the defined specs in memory.
type memDefs struct {
	mu    sync.Mutex
	specs map[string]hypervisor.DomainSpec
}

func (m *memDefs) DefinedSpecs() (map[string]hypervisor.DomainSpec, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.specs), nil
}

func (m *memDefs) SetDefined(s hypervisor.DomainSpec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.specs[s.VMID] = s
	return nil
}

func (m *memDefs) ForgetDefined(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.specs, id)
	return nil
}

// fakeClock is a settable clock whose tickers fire only when the test says.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	tickers []*fakeTicker
}

type fakeTicker struct {
	d time.Duration
	c chan time.Time
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }
func (t *fakeTicker) Stop()               {}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTicker(d time.Duration) clock.Ticker {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTicker{d: d, c: make(chan time.Time, 1)}
	c.tickers = append(c.tickers, t)
	return t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) ticker() *fakeTicker {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tickers) == 0 {
		return nil
	}
	return c.tickers[0]
}

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// world is one reconciler over an in-memory hypervisor, fed inputs given
// as values.
type world struct {
	hv    *memHV
	defs  *memDefs
	clock *fakeClock
	rec   *Reconciler

	mu        sync.Mutex
	in        Inputs
	inputsErr error // returned by the inputs function (ErrNotSynced before the first sync)
}

func newWorld(t *testing.T, in Inputs, inputsErr error, defined map[string]hypervisor.DomainSpec, domains ...hypervisor.Domain) *world {
	t.Helper()
	return newWorldInline(t, false, in, inputsErr, defined, domains...)
}

func newWorldInline(t *testing.T, inline bool, in Inputs, inputsErr error, defined map[string]hypervisor.DomainSpec, domains ...hypervisor.Domain) *world {
	t.Helper()
	if defined == nil {
		defined = map[string]hypervisor.DomainSpec{}
	}
	w := &world{hv: newMemHV(domains...), defs: &memDefs{specs: defined}, clock: &fakeClock{now: t0}, in: in, inputsErr: inputsErr}
	rec, err := New(Config{Hypervisor: w.hv, Definitions: w.defs, Clock: w.clock, SweepInterval: 7 * time.Second, ShutdownInline: inline,
		Inputs: func() (Inputs, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.in, w.inputsErr
		}})
	if err != nil {
		t.Fatal(err)
	}
	w.rec = rec
	return w
}

func settled(r *Reconciler) bool {
	select {
	case <-r.Settled():
		return true
	default:
		return false
	}
}

// TestPassDecisions steps one reconcile pass over an in-memory libvirt and
// checks what it did to the domains, in order.
func TestPassDecisions(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	a12 := dvm(idA, "a", structs.DesiredRunning, 12)
	b := dvm(idB, "b", structs.DesiredRunning, 20)
	run, stop := hypervisor.StateRunning, hypervisor.StateStopped
	unreadable := errors.New("retired generations: database not open")

	tests := []struct {
		name        string
		in          Inputs
		inputsErr   error
		defined     map[string]hypervisor.DomainSpec
		domains     []hypervisor.Domain
		fail        map[string]error
		wantErr     error // errors.Is; nil: the pass succeeds
		wantCalls   []string
		wantStates  map[string]string
		wantSettled bool
		// wantDestroyed: the running stale copies the pass reports
		// destroyed (for the next heartbeat), as "id/generation".
		wantDestroyed []string
	}{
		{name: "nothing is started before the first successful sync",
			in:         Inputs{Desired: []api.DesiredVM{a}},
			inputsErr:  ErrNotSynced,
			defined:    defined(a),
			domains:    []hypervisor.Domain{dom(idA, "a", stop, 10), dom(idB, "b", run, 20)},
			wantErr:    ErrNotSynced,
			wantStates: map[string]string{"a": stop, "b": run}},
		{name: "a desired-running vm that is defined but shut off is started",
			in:          Inputs{Desired: []api.DesiredVM{a}},
			defined:     defined(a),
			domains:     []hypervisor.Domain{dom(idA, "a", stop, 10)},
			wantCalls:   []string{"start a"},
			wantStates:  map[string]string{"a": run},
			wantSettled: true},
		{name: "a stale copy with an older generation is destroyed before anything is started",
			in:            Inputs{Desired: []api.DesiredVM{b, a12}},
			defined:       defined(a),
			domains:       []hypervisor.Domain{dom(idA, "a", run, 10)},
			wantCalls:     []string{"destroy a", "undefine a", "define a", "define b", "start a", "start b"},
			wantStates:    map[string]string{"a": run, "b": run},
			wantSettled:   true,
			wantDestroyed: []string{idA + "/10"}},
		{name: "a stale copy that cannot be destroyed blocks every define and start",
			in:         Inputs{Desired: []api.DesiredVM{b, a12}},
			domains:    []hypervisor.Domain{dom(idA, "a", run, 10)},
			fail:       map[string]error{"destroy " + idA: errors.New("injected destroy failure")},
			wantErr:    errors.New("any"),
			wantCalls:  []string{"destroy a"},
			wantStates: map[string]string{"a": run}},
		{name: "unreadable inputs (a hold's fencing record) change nothing",
			in:         Inputs{Desired: []api.DesiredVM{a}},
			inputsErr:  unreadable,
			defined:    defined(a),
			domains:    []hypervisor.Domain{dom(idA, "a", stop, 10), dom(idB, "b", run, 20)},
			wantErr:    ErrInputs,
			wantStates: map[string]string{"a": stop, "b": run}},
		{name: "a held vm is not started",
			in:          Inputs{Desired: []api.DesiredVM{a}, Hold: []string{idA}},
			defined:     defined(a),
			domains:     []hypervisor.Domain{dom(idA, "a", stop, 10)},
			wantStates:  map[string]string{"a": stop},
			wantSettled: true},
		{name: "drained: running vm shut down, nothing started",
			in:          Inputs{Desired: []api.DesiredVM{a, b}, Drained: true},
			defined:     defined(a, b),
			domains:     []hypervisor.Domain{dom(idA, "a", run, 10), dom(idB, "b", stop, 20)},
			wantCalls:   []string{"shutdown a"},
			wantStates:  map[string]string{"a": stop, "b": stop},
			wantSettled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, tt.in, tt.inputsErr, tt.defined, tt.domains...)
			maps.Copy(w.hv.fail, tt.fail)
			_, err := w.rec.Pass(context.Background())
			w.rec.Wait() // shutdowns run in the background
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("pass: %v", err)
			case tt.wantErr != nil && err == nil:
				t.Fatalf("pass succeeded; want an error")
			case tt.wantErr == ErrNotSynced || tt.wantErr == ErrInputs:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("pass: %v; want %v", err, tt.wantErr)
				}
			}
			calls, states := w.hv.snapshot()
			if !slices.Equal(calls, tt.wantCalls) {
				t.Errorf("libvirt calls = %q, want %q", calls, tt.wantCalls)
			}
			if !maps.Equal(states, tt.wantStates) {
				t.Errorf("domain states = %v, want %v", states, tt.wantStates)
			}
			if got := settled(w.rec); got != tt.wantSettled {
				t.Errorf("settled = %v, want %v", got, tt.wantSettled)
			}
			var destroyed []string
			for _, c := range w.rec.Destroyed() {
				destroyed = append(destroyed, fmt.Sprintf("%s/%d", c.VMID, c.Generation))
			}
			if !slices.Equal(destroyed, tt.wantDestroyed) {
				t.Errorf("destroyed stale copies = %q, want %q", destroyed, tt.wantDestroyed)
			}
			w.rec.AckDestroyed(len(destroyed))
			if left := w.rec.Destroyed(); len(left) != 0 {
				t.Errorf("destroyed stale copies after the ack: %+v", left)
			}
		})
	}
}

// TestUnreadableInputsAreReported: a pass over unreadable inputs is
// recorded as the last pass's error, stamped with the injected clock.
func TestUnreadableInputsAreReported(t *testing.T) {
	w := newWorld(t, Inputs{}, errors.New("adoptions: database not open"), nil)
	w.clock.Advance(90 * time.Second)
	if _, err := w.rec.Pass(context.Background()); !errors.Is(err, ErrInputs) {
		t.Fatalf("pass: %v; want ErrInputs", err)
	}
	_, at, lastErr := w.rec.Domains()
	if !at.Equal(t0.Add(90*time.Second)) || !errors.Is(lastErr, ErrInputs) || !strings.Contains(lastErr.Error(), "adoptions") {
		t.Fatalf("last pass at %v with %v; want %v with the inputs error", at, lastErr, t0.Add(90*time.Second))
	}
}

// TestRestartTimeOnTheInjectedClock: a crash seen in one pass and a start
// that succeeds only in a later pass give the time between them on the
// reconciler's clock.
func TestRestartTimeOnTheInjectedClock(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	w := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, defined(a), dom(idA, "a", hypervisor.StateCrashed, 10))
	w.hv.fail["start "+idA] = errors.New("injected start failure")
	if _, err := w.rec.Pass(context.Background()); err == nil {
		t.Fatal("first pass: the start failure was not reported")
	}
	delete(w.hv.fail, "start "+idA)
	w.clock.Advance(3 * time.Second)
	res, err := w.rec.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Restarted[idA]; got != 3*time.Second {
		t.Fatalf("restart time = %v, want 3s (crash seen at t0, started at t0+3s); result %+v", got, res)
	}
	if _, states := w.hv.snapshot(); states["a"] != hypervisor.StateRunning {
		t.Fatalf("states = %v; want a running", states)
	}
}

// TestSweepTickDrivesAPass: with no trigger and no event, the injected
// sweep ticker alone makes Run do a pass.
func TestSweepTickDrivesAPass(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	w := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, defined(a), dom(idA, "a", hypervisor.StateStopped, 10))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	poll(t, "Run to create its sweep ticker", func() (bool, any) {
		tk := w.clock.ticker()
		return tk != nil, tk
	})
	tk := w.clock.ticker()
	if tk.d != 7*time.Second {
		t.Fatalf("sweep ticker period = %v, want the configured 7s", tk.d)
	}
	if calls, _ := w.hv.snapshot(); len(calls) != 0 {
		t.Fatalf("libvirt touched before any trigger: %q", calls)
	}
	tk.c <- w.clock.Now()
	poll(t, "the sweep to start a", func() (bool, any) {
		calls, states := w.hv.snapshot()
		return states["a"] == hypervisor.StateRunning, calls
	})
}

// TestCrashEventRestartsWithoutSweep: Run restarts a crashed VM on
// libvirt's lifecycle event alone (issue 14): the sweep ticker never fires
// in this test, and the pass the event triggers lists libvirt once and
// starts the domain, nothing else. The event is libvirt's for a qemu
// killed with SIGKILL: stopped, reason failed (the listing says crashed).
func TestCrashEventRestartsWithoutSweep(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	w := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, defined(a), dom(idA, "a", hypervisor.StateRunning, 10))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	poll(t, "Run to create its sweep ticker", func() (bool, any) { return w.clock.ticker() != nil, nil })

	w.hv.mu.Lock()
	d := w.hv.domains[idA]
	d.State, d.Reason = hypervisor.StateCrashed, "crashed"
	w.hv.domains[idA] = d
	w.hv.mu.Unlock()
	start := time.Now()
	w.hv.events <- hypervisor.Event{Kind: hypervisor.EventLifecycle, UUID: idA, Detail: "stopped", Reason: "failed", At: w.clock.Now()}
	poll(t, "the crash event to restart a", func() (bool, any) {
		calls, states := w.hv.snapshot()
		return states["a"] == hypervisor.StateRunning, calls
	})
	took := time.Since(start)
	t.Logf("crash event → domain started again after %s (sweep: %s, never fired)", took.Round(time.Microsecond), w.clock.ticker().d)
	if took > time.Second {
		t.Errorf("restart took %s after the event, want well under a second", took)
	}
	if calls, _ := w.hv.snapshot(); !slices.Equal(calls, []string{"start " + idA[:1]}) {
		t.Errorf("libvirt calls of the pass = %q, want the start alone (besides one List)", calls)
	}
}

// TestStepTakesTriggersAndEvents: a caller stepping the reconciler learns
// from TakeTrigger when a pass is called for, and Step notes the queued
// libvirt events as Run does (a crash's time, on the injected clock).
func TestStepTakesTriggersAndEvents(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	w := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, defined(a), dom(idA, "a", hypervisor.StateRunning, 10))
	if w.rec.TakeTrigger() {
		t.Fatal("nothing queued, yet TakeTrigger asks for a pass")
	}
	w.rec.Trigger()
	w.rec.Trigger() // coalesces
	if !w.rec.TakeTrigger() || w.rec.TakeTrigger() {
		t.Fatal("two triggers: want one pass asked for, then none")
	}
	w.hv.events <- hypervisor.Event{Kind: hypervisor.EventDisconnected}
	if w.rec.TakeTrigger() {
		t.Fatal("a lost connection alone asks for a pass")
	}

	// A crashes at t0; the event is queued, and Step at t0+4s restarts it.
	w.hv.mu.Lock()
	d := w.hv.domains[idA]
	d.State = hypervisor.StateCrashed
	w.hv.domains[idA] = d
	w.hv.mu.Unlock()
	w.hv.events <- hypervisor.Event{Kind: hypervisor.EventLifecycle, UUID: idA, Detail: "crashed"}
	w.clock.Advance(4 * time.Second)
	res, err := w.rec.Step(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The event carried no time: it was noted when Step took it, at t0+4s,
	// so the restart took no time on the clock.
	if took, ok := res.Restarted[idA]; !ok || took != 0 {
		t.Fatalf("restarted = %v; want A restarted, crash noted at the step", res.Restarted)
	}
	if w.rec.TakeTrigger() {
		t.Fatal("Step left the event queued")
	}
}

// TestShutdownInline: with ShutdownInline the shutdown is done when the
// pass returns (no goroutine left behind), and asks for the pass that
// sees the domain stopped.
func TestShutdownInline(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredStopped, 10)
	w := newWorldInline(t, true, Inputs{Desired: []api.DesiredVM{a}}, nil, defined(a), dom(idA, "a", hypervisor.StateRunning, 10))
	if _, err := w.rec.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls, states := w.hv.snapshot()
	if states["a"] != hypervisor.StateStopped || !slices.Equal(calls, []string{"shutdown a"}) {
		t.Fatalf("when the pass returned: calls %q, states %v; want a shut down", calls, states)
	}
	if !w.rec.TakeTrigger() {
		t.Fatal("the finished shutdown did not ask for a pass")
	}
}

// poll is agenttest.Poll.
var poll = agenttest.Poll

// TestLockedDiskStartBacksOff: a start libvirt refuses because a disk is
// locked by another qemu (hypervisor.ErrDiskLocked) is tried again only
// after a delay that doubles (5 s, 10 s, …), not on every pass, and is
// visible in StartRefusals until the VM starts or is no longer wanted
// running. Any other start failure is still retried on the next pass.
func TestLockedDiskStartBacksOff(t *testing.T) {
	locked := fmt.Errorf("start domain %s: %w: resource busy: Lockspace resource 'x' is locked", idA, hypervisor.ErrDiskLocked)
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	w := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, nil, dom(idA, "a", hypervisor.StateStopped, 10))
	w.hv.fail["start "+idA] = locked
	starts := func() int {
		calls, _ := w.hv.snapshot()
		n := 0
		for _, c := range calls {
			if c == "start "+idA[:1] {
				n++
			}
		}
		return n
	}
	// pass at offset (from t0) → start attempts so far, refusals recorded.
	steps := []struct {
		at           time.Duration
		wantStarts   int
		wantAttempts int
	}{
		{0, 1, 1},
		{1 * time.Second, 1, 1},
		{4 * time.Second, 1, 1},
		{5 * time.Second, 2, 2}, // 5 s after the first refusal
		{14 * time.Second, 2, 2},
		{15 * time.Second, 3, 3}, // 10 s after the second
		{34 * time.Second, 3, 3},
		{35 * time.Second, 4, 4}, // 20 s after the third
	}
	for _, st := range steps {
		w.clock.Advance(t0.Add(st.at).Sub(w.clock.Now()))
		_, _ = w.rec.Pass(context.Background())
		if got := starts(); got != st.wantStarts {
			t.Fatalf("after the pass at +%s: %d start attempts, want %d", st.at, got, st.wantStarts)
		}
		ref, ok := w.rec.StartRefusals()[idA]
		if !ok || ref.Attempts != st.wantAttempts || !ref.Since.Equal(t0) || !strings.Contains(ref.Error, "Lockspace resource") {
			t.Fatalf("after the pass at +%s: refusal %+v (recorded %v), want %d attempts since %s naming the lease", st.at, ref, ok, st.wantAttempts, t0)
		}
	}

	// The lock frees: the next due attempt starts the VM and forgets the refusal.
	delete(w.hv.fail, "start "+idA)
	w.clock.Advance(40 * time.Second)
	if _, err := w.rec.Pass(context.Background()); err != nil {
		t.Fatalf("pass after the lock freed: %v", err)
	}
	if _, states := w.hv.snapshot(); states[idA[:1]] != hypervisor.StateRunning {
		t.Fatalf("vm a is %s after the lock freed, want running", states[idA[:1]])
	}
	if refs := w.rec.StartRefusals(); len(refs) != 0 {
		t.Fatalf("refusals after the start: %v, want none", refs)
	}

	// A refusal is forgotten once the VM is no longer desired running.
	w2 := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, nil, dom(idA, "a", hypervisor.StateStopped, 10))
	w2.hv.fail["start "+idA] = locked
	_, _ = w2.rec.Pass(context.Background())
	if len(w2.rec.StartRefusals()) != 1 {
		t.Fatalf("no refusal recorded: %v", w2.rec.StartRefusals())
	}
	w2.mu.Lock()
	w2.in = Inputs{Desired: []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 10)}}
	w2.mu.Unlock()
	_, _ = w2.rec.Pass(context.Background())
	if refs := w2.rec.StartRefusals(); len(refs) != 0 {
		t.Fatalf("refusals after the vm was desired stopped: %v, want none", refs)
	}

	// Any other start failure is retried on the very next pass.
	w3 := newWorld(t, Inputs{Desired: []api.DesiredVM{a}}, nil, nil, dom(idA, "a", hypervisor.StateStopped, 10))
	w3.hv.fail["start "+idA] = errors.New("internal error: process exited while connecting to monitor")
	for i := range 3 {
		_, _ = w3.rec.Pass(context.Background())
		w3.clock.Advance(time.Second)
		calls, _ := w3.hv.snapshot()
		if n := strings.Count(strings.Join(calls, ","), "start "+idA[:1]); n != i+1 {
			t.Fatalf("other failure: %d start attempts after %d passes, want %d", n, i+1, i+1)
		}
	}
	if refs := w3.rec.StartRefusals(); len(refs) != 0 {
		t.Fatalf("other failure recorded as a lock refusal: %v", refs)
	}
}
