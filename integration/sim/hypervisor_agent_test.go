package sim_test

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	agentclock "github.com/chime-ha/chime/chime/agent/clock"

	"github.com/chime-ha/chime/chime/agent"
	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
	"github.com/chime-ha/chime/integration/sim"
)

// The agent's own code, run against the simulated hypervisor.
var (
	_ reconcile.Hypervisor = (*sim.Hypervisor)(nil)
	_ handover.Hypervisor  = (*sim.Hypervisor)(nil)
	_ agent.Hypervisor     = (*sim.Hypervisor)(nil)
)

// memDefs keeps the reconciler's defined specs in memory.
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

// recClock is the reconciler's view of the test clock; its sweep ticker
// never fires (passes are driven by the test or by events).
type recClock struct {
	mu sync.Mutex
	c  *clock
}

func (r *recClock) Now() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c.Now()
}

func (r *recClock) advance(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.c.advance(d)
}

func (r *recClock) NewTicker(time.Duration) agentclock.Ticker { return idleTicker{} }

type idleTicker struct{}

func (idleTicker) C() <-chan time.Time { return nil }
func (idleTicker) Stop()               {}

func dvm(id, name string, gen uint64) api.DesiredVM {
	return api.DesiredVM{ID: id, Name: name, DesiredState: structs.DesiredRunning, Generation: gen,
		Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
}

// calls records the mutating calls a host receives, as reconcile's own
// in-memory libvirt does ("verb prefix"), through the fault hook.
type calls struct {
	mu   sync.Mutex
	on   bool
	seen []string
	fail map[string]error // "destroy <uuid>" → error of that call
}

func (c *calls) hook(call sim.Call) sim.Fault {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on || call.Op == sim.OpList {
		return sim.Fault{}
	}
	c.seen = append(c.seen, string(call.Op)+" "+call.UUID[:1])
	return sim.Fault{Err: c.fail[string(call.Op)+" "+call.UUID]}
}

func (c *calls) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = true
}

func (c *calls) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.seen)
}

// agentHost is one simulated host with the real reconciler on it.
type agentHost struct {
	clk   *recClock
	hv    *sim.Hypervisor
	calls *calls
	defs  *memDefs
	rec   *reconcile.Reconciler

	mu sync.Mutex
	in reconcile.Inputs
}

func newAgentHost(t *testing.T, in reconcile.Inputs, defined ...api.DesiredVM) *agentHost {
	t.Helper()
	a := &agentHost{clk: &recClock{c: &clock{now: t0}}, calls: &calls{fail: map[string]error{}}, in: in,
		defs: &memDefs{specs: map[string]hypervisor.DomainSpec{}}}
	for _, vm := range defined {
		a.defs.specs[vm.ID] = reconcile.DomainSpecOf(vm)
	}
	hv, err := sim.NewHypervisor(sim.HypervisorConfig{Name: "h1", Clock: a.clk.Now, VCPUs: 4, MemoryMiB: 8192, Fault: a.calls.hook})
	if err != nil {
		t.Fatal(err)
	}
	a.hv = hv
	a.rec, err = reconcile.New(reconcile.Config{Hypervisor: hv, Definitions: a.defs, Clock: a.clk,
		ShutdownGrace: time.Minute, Inputs: func() (reconcile.Inputs, error) {
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.in, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *agentHost) setInputs(in reconcile.Inputs) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.in = in
}

// pass runs one reconcile pass and waits for the shutdowns it started.
func (a *agentHost) pass(t *testing.T) (reconcile.PassResult, error) {
	t.Helper()
	res, err := a.rec.Pass(context.Background())
	a.rec.Wait()
	return res, err
}

// domainOn puts a chime domain of vm on the host, running or not, before
// the test starts recording calls.
func domainOn(t *testing.T, h *sim.Hypervisor, vm api.DesiredVM, run bool) {
	t.Helper()
	must(t, h.Define(context.Background(), reconcile.DomainSpecOf(vm)))
	if run {
		must(t, h.Start(context.Background(), vm.ID))
	}
}

// TestReconcilerMatchesItsInMemoryLibvirt replays cases of reconcile's own
// TestPassDecisions (which run over its in-memory libvirt) against the
// simulated hypervisor: the same inputs must give the same calls, in order,
// and the same end states.
func TestReconcilerMatchesItsInMemoryLibvirt(t *testing.T) {
	a10, a12, b := dvm(idA, "a", 10), dvm(idA, "a", 12), dvm(idB, "b", 20)
	run, stop := hypervisor.StateRunning, hypervisor.StateStopped
	type dom struct {
		vm  api.DesiredVM
		run bool
	}
	tests := []struct {
		name       string
		in         reconcile.Inputs
		defined    []api.DesiredVM
		domains    []dom
		fail       map[string]error
		wantErr    bool
		wantCalls  []string
		wantStates map[string]string
	}{
		{name: "a desired-running vm that is defined but shut off is started",
			in: reconcile.Inputs{Desired: []api.DesiredVM{a10}}, defined: []api.DesiredVM{a10},
			domains:    []dom{{a10, false}},
			wantCalls:  []string{"start a"},
			wantStates: map[string]string{"a": run}},
		{name: "a stale copy with an older generation is destroyed before anything is started",
			in: reconcile.Inputs{Desired: []api.DesiredVM{b, a12}}, defined: []api.DesiredVM{a10},
			domains:    []dom{{a10, true}},
			wantCalls:  []string{"destroy a", "undefine a", "define a", "define b", "start a", "start b"},
			wantStates: map[string]string{"a": run, "b": run}},
		{name: "a stale copy that cannot be destroyed blocks every define and start",
			in:         reconcile.Inputs{Desired: []api.DesiredVM{b, a12}},
			domains:    []dom{{a10, true}},
			fail:       map[string]error{"destroy " + idA: errors.New("injected destroy failure")},
			wantErr:    true,
			wantCalls:  []string{"destroy a"},
			wantStates: map[string]string{"a": run}},
		{name: "a held vm is not started",
			in: reconcile.Inputs{Desired: []api.DesiredVM{a10}, Hold: []string{idA}}, defined: []api.DesiredVM{a10},
			domains:    []dom{{a10, false}},
			wantStates: map[string]string{"a": stop}},
		{name: "drained: running vm shut down, nothing started",
			in: reconcile.Inputs{Desired: []api.DesiredVM{a10, b}, Drained: true}, defined: []api.DesiredVM{a10, b},
			domains:    []dom{{a10, true}, {b, false}},
			wantCalls:  []string{"shutdown a"},
			wantStates: map[string]string{"a": stop, "b": stop}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAgentHost(t, tt.in, tt.defined...)
			for _, d := range tt.domains {
				domainOn(t, a.hv, d.vm, d.run)
			}
			maps.Copy(a.calls.fail, tt.fail)
			a.calls.start()
			_, err := a.pass(t)
			if (err != nil) != tt.wantErr {
				t.Fatalf("pass: %v; want error %v", err, tt.wantErr)
			}
			if got := a.calls.got(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("libvirt calls = %q, want %q", got, tt.wantCalls)
			}
			got := map[string]string{}
			for _, d := range a.hv.Domains() {
				got[d.UUID[:1]] = d.State
			}
			if !maps.Equal(got, tt.wantStates) {
				t.Errorf("domain states = %v, want %v", got, tt.wantStates)
			}
		})
	}
}

// TestReconcilerConverges drives the real reconciler over the simulated
// hypervisor through a stale copy, a foreign domain, a qemu crash, a
// libvirtd outage and an ACPI-ignoring guest, and checks the world after
// each: the desired VMs run at their generation, the stale copy is
// destroyed before anything starts, the foreign domain is never touched.
func TestReconcilerConverges(t *testing.T) {
	a10, a12, b := dvm(idA, "a", 10), dvm(idA, "a", 12), dvm(idB, "b", 20)
	a := newAgentHost(t, reconcile.Inputs{Desired: []api.DesiredVM{a12, b}}, a10)
	domainOn(t, a.hv, a10, true)
	must(t, a.hv.AddForeign(idF, "not-chimes", true))
	events(a.hv)
	want := []string{"a 12", "b 20", "f 0"}

	// Pass 1: the stale copy goes first, then both VMs start.
	a.clk.advance(time.Second)
	if _, err := a.pass(t); err != nil {
		t.Fatalf("pass 1: %v", err)
	}
	evs := events(a.hv)
	destroyed := slices.Index(evs, "stopped/destroyed a")
	firstStart := slices.IndexFunc(evs, func(e string) bool { return strings.HasPrefix(e, "started/") })
	if destroyed < 0 || firstStart < 0 || destroyed > firstStart {
		t.Fatalf("pass 1 events = %q; want the stale copy destroyed before any start", evs)
	}
	if got := running(a.hv); !slices.Equal(got, want) {
		t.Fatalf("after pass 1 running = %q, want %q", got, want)
	}

	// Pass 2: converged, nothing to do.
	res, err := a.pass(t)
	if err != nil || len(res.Actions) != 0 {
		t.Fatalf("pass 2: actions %v, err %v; want none", res.Actions, err)
	}
	if got := events(a.hv); len(got) != 0 {
		t.Fatalf("pass 2 changed libvirt: %q", got)
	}

	// A qemu crash: the next pass starts it again.
	a.hv.Crash(idA)
	a.clk.advance(time.Second)
	res, err = a.pass(t)
	if _, ok := res.Restarted[idA]; err != nil || !ok {
		t.Fatalf("pass after crash: restarted %v, err %v; want a restarted", res.Restarted, err)
	}
	if got := running(a.hv); !slices.Equal(got, want) {
		t.Fatalf("after the crash pass running = %q, want %q", got, want)
	}

	// libvirtd down: the pass fails and changes nothing; b crashes meanwhile.
	a.hv.StopLibvirtd()
	a.hv.Crash(idB)
	if _, err := a.pass(t); !errors.Is(err, hypervisor.ErrDisconnected) {
		t.Fatalf("pass with libvirtd down: %v; want ErrDisconnected", err)
	}
	a.hv.StartLibvirtd()
	if _, err := a.pass(t); err != nil {
		t.Fatalf("pass after libvirtd restart: %v", err)
	}
	if got := running(a.hv); !slices.Equal(got, want) {
		t.Fatalf("after libvirtd restart running = %q, want %q", got, want)
	}

	// b desired stopped, its guest ignores ACPI: destroyed by the shutdown.
	a.hv.SetIgnoresACPI(idB, true)
	bStopped := b
	bStopped.DesiredState = structs.DesiredStopped
	a.setInputs(reconcile.Inputs{Desired: []api.DesiredVM{a12, bStopped}})
	if _, err := a.pass(t); err != nil {
		t.Fatalf("pass with b desired stopped: %v", err)
	}
	if got := states(t, a.hv)["b"]; got != "stopped/destroyed 20" {
		t.Fatalf("b = %s, want stopped/destroyed (its guest ignores acpi)", got)
	}
	if got := a.hv.ForeignTouches(); len(got) != 0 {
		t.Fatalf("the reconciler touched the foreign domain: %+v", got)
	}
	if got := states(t, a.hv)["f"]; got != "running/booted -" {
		t.Fatalf("foreign domain = %s, want still running", got)
	}
}

// TestReconcilerRunFollowsEvents: the real Run loop reads the simulated
// Events channel; a crash's event alone brings a pass that restarts the VM.
func TestReconcilerRunFollowsEvents(t *testing.T) {
	a10 := dvm(idA, "a", 10)
	a := newAgentHost(t, reconcile.Inputs{Desired: []api.DesiredVM{a10}}, a10)
	domainOn(t, a.hv, a10, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	a.hv.Crash(idA)
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs := a.hv.Domains()
		// Crash left it crashed at once: only a Start brings it back.
		if len(recs) == 1 && recs[0].State == hypervisor.StateRunning && recs[0].Reason == "booted" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a not restarted after its crash event; domains %+v", recs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reporter collects migration reports.
type reporter struct{ ch chan api.MigrationReport }

func (r *reporter) ReportMigration(_ context.Context, rep api.MigrationReport) error {
	r.ch <- rep
	return nil
}

// TestHandoverMigration runs the agent's real hand-over code (ordered live
// migration, fencing records in the real bbolt store) and the real
// reconciler on both ends over two simulated hosts, for every migration
// outcome. Whatever the outcome, the VM never runs on both hosts; when it
// left, the source fences the generation so that its reconciler does not
// start it again, and reports success only on libvirt's word: with the
// reply lost it reports the outcome unknown (uniqueness rule 8; the
// destination's heartbeat then settles it).
func TestHandoverMigration(t *testing.T) {
	tests := []struct {
		name      string
		outcome   sim.MigrationOutcome
		destDown  bool
		wantOK    bool
		wantUnk   bool
		wantWhere string
	}{
		{name: "succeeds", outcome: sim.MigrationSucceeds, wantOK: true, wantWhere: "dst"},
		{name: "fails before", outcome: sim.MigrationFailsBefore, wantWhere: "src"},
		{name: "fails during", outcome: sim.MigrationFailsDuring, wantWhere: "src"},
		{name: "succeeds, reply lost", outcome: sim.MigrationReplyLost, wantUnk: true, wantWhere: "dst"},
		{name: "destination libvirtd down", destDown: true, wantWhere: "src"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := &recClock{c: &clock{now: t0}}
			w := &world{hosts: map[string]*sim.Hypervisor{}, down: map[[2]string]bool{}}
			mk := func(name, addr string, decide sim.MigrationDecider) *sim.Hypervisor {
				h, err := sim.NewHypervisor(sim.HypervisorConfig{Name: name, Clock: c.Now, World: w, Migration: decide})
				if err != nil {
					t.Fatal(err)
				}
				w.hosts[addr] = h
				return h
			}
			src := mk("src", "10.0.0.1", func(sim.Migration) sim.MigrationOutcome { return tt.outcome })
			dst := mk("dst", "10.0.0.2", nil)
			vm := dvm(idA, "a", 12)
			domainOn(t, src, vm, true)
			if tt.destDown {
				dst.StopLibvirtd()
			}

			st, err := store.Open(filepath.Join(t.TempDir(), "agent.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			rep := &reporter{ch: make(chan api.MigrationReport, 1)}
			m := handover.New(handover.Config{NodeID: "src", Hypervisor: src, Store: st, Reporter: rep})
			ordered := vm
			ordered.Migrate = &api.MigrationOrder{TaskID: "task-1", ToNodeID: "dst",
				DestURI: handover.LibvirtURI("10.0.0.2"), MigrateURI: "tcp://10.0.0.2"}
			ds := api.DesiredState{NodeID: "src", VMs: []api.DesiredVM{ordered}}
			m.AfterDesired(ctx, ds)
			var got api.MigrationReport
			select {
			case got = <-rep.ch:
			case <-time.After(10 * time.Second):
				t.Fatal("no migration report within 10s")
			}
			m.Close() // waits for the migration's goroutine to finish
			if got.OK != tt.wantOK || got.Unknown != tt.wantUnk || got.VMID != idA || got.Generation != 12 {
				t.Fatalf("report = %+v; want ok %v unknown %v for %s generation 12", got, tt.wantOK, tt.wantUnk, idA)
			}
			where := func() string {
				var on []string
				for name, qs := range sim.SnapshotRunning(src, dst) {
					for _, q := range qs {
						if q.UUID == idA {
							on = append(on, name)
						}
					}
				}
				slices.Sort(on)
				return strings.Join(on, "+")
			}
			if got := where(); got != tt.wantWhere {
				t.Fatalf("after the migration a runs on %q, want %q", got, tt.wantWhere)
			}

			// The source's reconciler, with the placement not yet moved by
			// the servers: it must not start a VM that left.
			hold, err := m.Hold(ds)
			if err != nil {
				t.Fatal(err)
			}
			left := tt.wantWhere == "dst"
			if held := slices.Contains(hold, idA); held != left {
				t.Fatalf("source holds %v; want a held: %v", hold, left)
			}
			retired, err := st.Retired()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]uint64{true: 12, false: 0}[left]; retired[idA] != want {
				t.Fatalf("retired generation = %d, want %d", retired[idA], want)
			}
			if open, err := st.Handovers(); err != nil || len(open) != 0 {
				t.Fatalf("open hand-overs = %v, err %v; want none", open, err)
			}
			srcRec, err := reconcile.New(reconcile.Config{Hypervisor: src, Clock: c,
				Definitions: &memDefs{specs: map[string]hypervisor.DomainSpec{idA: reconcile.DomainSpecOf(vm)}},
				Inputs: func() (reconcile.Inputs, error) {
					return reconcile.Inputs{Desired: []api.DesiredVM{vm}, Hold: hold}, nil
				}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := srcRec.Pass(ctx); err != nil {
				t.Fatalf("source pass: %v", err)
			}
			if got := where(); got != tt.wantWhere {
				t.Fatalf("after the source's pass a runs on %q, want %q", got, tt.wantWhere)
			}
			if tt.wantWhere != "dst" {
				return
			}

			// The destination adopts it at the new placement's generation:
			// metadata updated, the qemu that arrived is kept.
			before := dst.Running()
			moved := dvm(idA, "a", 13)
			moved.AdoptGeneration = 12
			dstRec, err := reconcile.New(reconcile.Config{Hypervisor: dst, Clock: c,
				Definitions: &memDefs{specs: map[string]hypervisor.DomainSpec{}},
				Inputs: func() (reconcile.Inputs, error) {
					return reconcile.Inputs{Desired: []api.DesiredVM{moved}}, nil
				}})
			if err != nil {
				t.Fatal(err)
			}
			c.advance(time.Second)
			if _, err := dstRec.Pass(ctx); err != nil {
				t.Fatalf("destination pass: %v", err)
			}
			after := dst.Running()
			if len(after) != 1 || after[0].Generation != 13 || !after[0].Since.Equal(before[0].Since) {
				t.Fatalf("destination running %+v (before %+v); want the same qemu at generation 13", after, before)
			}
			if recs := dst.Domains(); recs[0].Reason != "migrated" || !reflect.DeepEqual(recs[0].Spec, reconcile.DomainSpecOf(moved)) {
				t.Fatalf("destination domain %+v; want still the migrated qemu, defined with the new spec", recs[0])
			}
		})
	}
}
