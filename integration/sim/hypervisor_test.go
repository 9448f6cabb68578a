package sim_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/hypervisor"
	"github.com/chime-ha/chime/integration/sim"
)

const (
	idA = "aaaaaaaa-0000-0000-0000-000000000001"
	idB = "bbbbbbbb-0000-0000-0000-000000000002"
	idF = "ffffffff-0000-0000-0000-00000000000f" // a foreign domain
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// clock is the simulated time of a test.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) advance(d time.Duration) { c.now = c.now.Add(d) }

// world resolves hosts by address and keeps a set of broken links.
type world struct {
	hosts map[string]*sim.Hypervisor // address → hypervisor
	down  map[[2]string]bool         // {from, to} names of broken migration paths
}

func (w *world) HypervisorAt(addr string) *sim.Hypervisor { return w.hosts[addr] }
func (w *world) MigrationLinkUp(from, to string, _ ...string) bool {
	return !w.down[[2]string{from, to}]
}

// hostCfg tweaks a host's configuration.
type hostCfg func(*sim.HypervisorConfig)

func newHost(t *testing.T, c *clock, w *world, name, addr string, opts ...hostCfg) *sim.Hypervisor {
	t.Helper()
	cfg := sim.HypervisorConfig{Name: name, Clock: c.Now, VCPUs: 8, MemoryMiB: 16384}
	if w != nil {
		cfg.World = w
	}
	for _, o := range opts {
		o(&cfg)
	}
	h, err := sim.NewHypervisor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if w != nil {
		w.hosts[addr] = h
	}
	return h
}

func spec(id, name string, gen uint64) hypervisor.DomainSpec {
	return hypervisor.DomainSpec{VMID: id, Name: name, VCPUs: 1, MemoryMiB: 64,
		Disks: []string{"/var/lib/chime/" + name + ".qcow2"}, Generation: gen}
}

// events drains the events queued so far, rendered as
// "detail/reason <uuid prefix>" for lifecycle events and the kind otherwise.
func events(h *sim.Hypervisor) []string {
	var out []string
	ch := h.Events()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return append(out, "closed")
			}
			out = append(out, render(ev))
		default:
			return out
		}
	}
}

func render(ev hypervisor.Event) string {
	if ev.Kind != hypervisor.EventLifecycle {
		return string(ev.Kind)
	}
	return ev.Detail + "/" + ev.Reason + " " + ev.UUID[:1]
}

// states renders List as "prefix" → "state/reason gen" (gen "-" for foreign).
func states(t *testing.T, h *sim.Hypervisor) map[string]string {
	t.Helper()
	doms, err := h.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	out := map[string]string{}
	for _, d := range doms {
		gen := "-"
		if d.Meta != nil {
			gen = fmt.Sprint(d.Meta.Generation)
		}
		out[d.UUID[:1]] = d.State + "/" + d.Reason + " " + gen
	}
	return out
}

// running renders Running as "prefix gen".
func running(h *sim.Hypervisor) []string {
	var out []string
	for _, q := range h.Running() {
		out = append(out, fmt.Sprintf("%s %d", q.UUID[:1], q.Generation))
	}
	return out
}

// errAny stands for "some error" in a table.
var errAny = errors.New("any error")

func checkErr(t *testing.T, what string, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("%s: %v", what, err)
	case want != nil && err == nil:
		t.Fatalf("%s succeeded; want %v", what, want)
	case want != nil && want != errAny && !errors.Is(err, want):
		t.Fatalf("%s: %v; want an error wrapping %v", what, err, want)
	}
}

// TestLifecycle steps one host through the driver's lifecycle calls and
// checks, after each, the error, the listed states, the qemu processes and
// the events, as the real driver reports them.
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "")
	a1, a2 := spec(idA, "a", 1), spec(idA, "a", 2)
	a2.VCPUs = 2

	steps := []struct {
		name        string
		do          func() error
		wantErr     error // errors.Is; errAny: any error
		wantStates  map[string]string
		wantRunning []string
		wantEvents  []string
	}{
		{name: "define a new domain: shut off, chime metadata",
			do:         func() error { return h.Define(ctx, a1) },
			wantStates: map[string]string{"a": "stopped/unknown 1"},
			wantEvents: []string{"defined/added a"}},
		{name: "start: running, booted",
			do:          func() error { return h.Start(ctx, idA) },
			wantStates:  map[string]string{"a": "running/booted 1"},
			wantRunning: []string{"a 1"},
			wantEvents:  []string{"started/booted a"}},
		{name: "start of a running domain is left alone",
			do:          func() error { return h.Start(ctx, idA) },
			wantStates:  map[string]string{"a": "running/booted 1"},
			wantRunning: []string{"a 1"}},
		{name: "redefine while running: new metadata at once, qemu keeps running",
			do:          func() error { return h.Define(ctx, a2) },
			wantStates:  map[string]string{"a": "running/booted 2"},
			wantRunning: []string{"a 2"},
			wantEvents:  []string{"defined/updated a"}},
		{name: "shutdown of a guest that honours acpi",
			do:         func() error { return h.Shutdown(ctx, idA, time.Minute) },
			wantStates: map[string]string{"a": "stopped/shutdown 2"},
			wantEvents: []string{"shutdown/guest a", "stopped/shutdown a"}},
		{name: "shutdown of a stopped domain is a no-op",
			do:         func() error { return h.Shutdown(ctx, idA, time.Minute) },
			wantStates: map[string]string{"a": "stopped/shutdown 2"}},
		{name: "destroy of a stopped domain is a no-op",
			do:         func() error { return h.Destroy(ctx, idA) },
			wantStates: map[string]string{"a": "stopped/shutdown 2"}},
		{name: "start again",
			do:          func() error { return h.Start(ctx, idA) },
			wantStates:  map[string]string{"a": "running/booted 2"},
			wantRunning: []string{"a 2"},
			wantEvents:  []string{"started/booted a"}},
		{name: "destroy: stopped, destroyed, definition kept",
			do:         func() error { return h.Destroy(ctx, idA) },
			wantStates: map[string]string{"a": "stopped/destroyed 2"},
			wantEvents: []string{"stopped/destroyed a"}},
		{name: "start, to undefine a running domain next",
			do:          func() error { return h.Start(ctx, idA) },
			wantStates:  map[string]string{"a": "running/booted 2"},
			wantRunning: []string{"a 2"},
			wantEvents:  []string{"started/booted a"}},
		{name: "undefine of a running domain destroys it first",
			do:         func() error { return h.Undefine(ctx, idA) },
			wantStates: map[string]string{},
			wantEvents: []string{"stopped/destroyed a", "undefined/removed a"}},
		{name: "undefine of a missing domain is not an error",
			do:         func() error { return h.Undefine(ctx, idA) },
			wantStates: map[string]string{}},
		{name: "start of a missing domain", do: func() error { return h.Start(ctx, idA) },
			wantErr: hypervisor.ErrNotFound, wantStates: map[string]string{}},
		{name: "destroy of a missing domain", do: func() error { return h.Destroy(ctx, idA) },
			wantErr: hypervisor.ErrNotFound, wantStates: map[string]string{}},
		{name: "shutdown of a missing domain", do: func() error { return h.Shutdown(ctx, idA, time.Second) },
			wantErr: hypervisor.ErrNotFound, wantStates: map[string]string{}},
		{name: "get of a missing domain", do: func() error { _, err := h.Get(ctx, idA); return err },
			wantErr: hypervisor.ErrNotFound, wantStates: map[string]string{}},
		{name: "a malformed uuid is refused, not reported missing",
			do: func() error {
				err := h.Start(ctx, "not-a-uuid")
				if errors.Is(err, hypervisor.ErrNotFound) {
					return fmt.Errorf("want a parse error, got %w", err)
				}
				return err
			},
			wantErr: errAny, wantStates: map[string]string{}},
		{name: "define validates the spec as the driver does",
			do:      func() error { s := a1; s.VCPUs = 0; return h.Define(ctx, s) },
			wantErr: errAny, wantStates: map[string]string{}},
		{name: "define b",
			do:         func() error { return h.Define(ctx, spec(idB, "b", 5)) },
			wantStates: map[string]string{"b": "stopped/unknown 5"},
			wantEvents: []string{"defined/added b"}},
		{name: "libvirt refuses a uuid already defined under another name",
			do:      func() error { return h.Define(ctx, spec(idB, "b2", 6)) },
			wantErr: errAny, wantStates: map[string]string{"b": "stopped/unknown 5"}},
		{name: "libvirt refuses a name already defined under another uuid",
			do:      func() error { return h.Define(ctx, spec(idA, "b", 1)) },
			wantErr: errAny, wantStates: map[string]string{"b": "stopped/unknown 5"}},
		{name: "an upper-case uuid names the same domain, as in libvirt",
			do:          func() error { return h.Start(ctx, strings.ToUpper(idB)) },
			wantStates:  map[string]string{"b": "running/booted 5"},
			wantRunning: []string{"b 5"},
			wantEvents:  []string{"started/booted b"}},
	}
	for i, st := range steps {
		c.advance(time.Second) // each step at its own instant
		err := st.do()
		if st.wantErr == nil && err != nil {
			t.Fatalf("step %d (%s): %v", i, st.name, err)
		}
		if st.wantErr != nil {
			checkErr(t, fmt.Sprintf("step %d (%s)", i, st.name), err, st.wantErr)
		}
		if got := states(t, h); !reflect.DeepEqual(got, st.wantStates) {
			t.Errorf("step %d (%s): states = %v, want %v", i, st.name, got, st.wantStates)
		}
		if got := running(h); !slices.Equal(got, st.wantRunning) {
			t.Errorf("step %d (%s): running = %q, want %q", i, st.name, got, st.wantRunning)
		}
		// Check the stamps before events drains the channel.
		var got []string
		for _, ev := range drainRaw(h) {
			if !ev.At.Equal(c.Now()) {
				t.Errorf("step %d (%s): event %s stamped %v, want the simulated now %v", i, st.name, render(ev), ev.At, c.Now())
			}
			got = append(got, render(ev))
		}
		if !slices.Equal(got, st.wantEvents) {
			t.Errorf("step %d (%s): events = %q, want %q", i, st.name, got, st.wantEvents)
		}
	}
}

func drainRaw(h *sim.Hypervisor) []hypervisor.Event {
	var out []hypervisor.Event
	for {
		select {
		case ev, ok := <-h.Events():
			if !ok {
				return out
			}
			out = append(out, ev)
		default:
			return out
		}
	}
}

// TestRedefineKeepsTheRunningDefinition: a running domain keeps the
// definition it started with until it restarts; the persistent one changes.
func TestRedefineKeepsTheRunningDefinition(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "")
	s1 := spec(idA, "a", 1)
	must(t, h.Define(ctx, s1))
	must(t, h.Start(ctx, idA))
	s2 := spec(idA, "a", 2)
	s2.MemoryMiB = 128
	must(t, h.Define(ctx, s2))
	recs := h.Domains()
	if len(recs) != 1 || recs[0].LiveSpec.MemoryMiB != 64 || recs[0].Spec.MemoryMiB != 128 || recs[0].Meta.Generation != 2 || !recs[0].Since.Equal(t0) {
		t.Fatalf("domains = %+v; want live memory 64, persistent 128, generation 2, running since %v", recs, t0)
	}
	must(t, h.Destroy(ctx, idA))
	must(t, h.Start(ctx, idA))
	if recs := h.Domains(); recs[0].LiveSpec.MemoryMiB != 128 {
		t.Fatalf("after restart the live memory is %d, want the new 128", recs[0].LiveSpec.MemoryMiB)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestShutdownGrace: an ACPI-ignoring guest (or no grace at all) is
// destroyed, as the driver does when the grace runs out; the call returns
// at the same simulated instant.
func TestShutdownGrace(t *testing.T) {
	tests := []struct {
		name        string
		ignoresACPI bool
		grace       time.Duration
		wantReason  string
		wantEvents  []string
	}{
		{"guest honours acpi", false, 30 * time.Second, "shutdown", []string{"shutdown/guest a", "stopped/shutdown a"}},
		{"guest ignores acpi", true, 30 * time.Second, "destroyed", []string{"stopped/destroyed a"}},
		{"no grace at all", false, 0, "destroyed", []string{"stopped/destroyed a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := &clock{now: t0}
			h := newHost(t, c, nil, "h1", "")
			h.SetIgnoresACPI(idA, tt.ignoresACPI) // a property of the guest: set before the domain exists
			must(t, h.Define(ctx, spec(idA, "a", 1)))
			must(t, h.Start(ctx, idA))
			events(h)
			must(t, h.Shutdown(ctx, idA, tt.grace))
			if got := states(t, h)["a"]; got != "stopped/"+tt.wantReason+" 1" {
				t.Errorf("state = %s, want stopped/%s", got, tt.wantReason)
			}
			if got := events(h); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %q, want %q", got, tt.wantEvents)
			}
			if len(h.Running()) != 0 {
				t.Errorf("qemu still running: %+v", h.Running())
			}
		})
	}
}

// TestForeignDomain: a domain without chime metadata is listed with Meta
// nil, Define over it is refused with ErrForeign and leaves it as it was,
// and any mutating call that names it is recorded for the checker.
func TestForeignDomain(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "")
	must(t, h.AddForeign(idF, "someone-elses", true))
	if err := h.AddForeign(idF, "again", false); err == nil {
		t.Fatal("AddForeign accepted a uuid already defined")
	}
	events(h)

	if err := h.Define(ctx, spec(idF, "f", 1)); !errors.Is(err, hypervisor.ErrForeign) {
		t.Fatalf("Define over a foreign domain: %v; want ErrForeign", err)
	}
	if got := states(t, h)["f"]; got != "running/booted -" {
		t.Fatalf("foreign domain after the refused Define = %s, want running/booted without metadata", got)
	}
	if got := h.Running(); len(got) != 1 || !got[0].Foreign || got[0].Name != "someone-elses" {
		t.Fatalf("running = %+v; want the foreign qemu", got)
	}
	if got := events(h); len(got) != 0 {
		t.Fatalf("events after a refused Define: %q", got)
	}
	if got := h.ForeignTouches(); len(got) != 0 {
		t.Fatalf("foreign touches after List and a refused Define: %+v", got)
	}
	must(t, h.Destroy(ctx, idF))
	want := []sim.Call{{Host: "h1", Op: sim.OpDestroy, UUID: idF}}
	if got := h.ForeignTouches(); !reflect.DeepEqual(got, want) {
		t.Fatalf("foreign touches = %+v, want %+v", got, want)
	}
}

// TestGuestFaults: a qemu crash, a guest panic and a guest power-off, each
// with libvirt's state, reason and events; the next Start boots it again.
func TestGuestFaults(t *testing.T) {
	tests := []struct {
		name       string
		fault      func(h *sim.Hypervisor, id string) bool
		wantState  string
		wantEvents []string
	}{
		{"qemu crash", (*sim.Hypervisor).Crash, "crashed/crashed 1", []string{"stopped/failed a"}},
		{"guest panic", (*sim.Hypervisor).Panic, "crashed/crashed 1", []string{"crashed/panicked a", "stopped/crashed a"}},
		{"guest powers off", (*sim.Hypervisor).GuestPowerOff, "stopped/shutdown 1", []string{"shutdown/guest a", "stopped/shutdown a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := &clock{now: t0}
			h := newHost(t, c, nil, "h1", "")
			must(t, h.Define(ctx, spec(idA, "a", 1)))
			if tt.fault(h, idA) {
				t.Fatal("fault on a domain that is not running reported a qemu")
			}
			must(t, h.Start(ctx, idA))
			events(h)
			if !tt.fault(h, idA) {
				t.Fatal("fault on a running domain reported no qemu")
			}
			if got := states(t, h)["a"]; got != tt.wantState {
				t.Errorf("state = %s, want %s", got, tt.wantState)
			}
			if got := events(h); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %q, want %q", got, tt.wantEvents)
			}
			if len(h.Running()) != 0 {
				t.Errorf("qemu still running: %+v", h.Running())
			}
			must(t, h.Start(ctx, idA))
			if got := states(t, h)["a"]; got != "running/booted 1" {
				t.Errorf("after Start: %s, want running/booted", got)
			}
		})
	}
}

// TestLibvirtdDownUp: while libvirtd is down every call fails with
// ErrDisconnected and qemu keeps running; a crash then is seen only in the
// state after libvirtd is back, announced by EventReconnected.
func TestLibvirtdDownUp(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "")
	must(t, h.Define(ctx, spec(idA, "a", 1)))
	must(t, h.Define(ctx, spec(idB, "b", 1)))
	must(t, h.Start(ctx, idA))
	must(t, h.Start(ctx, idB))
	events(h)

	h.StopLibvirtd()
	if h.Connected() || h.LibvirtdUp() {
		t.Fatal("Connected while libvirtd is down")
	}
	calls := map[string]func() error{
		"list":     func() error { _, err := h.List(ctx); return err },
		"get":      func() error { _, err := h.Get(ctx, idA); return err },
		"define":   func() error { return h.Define(ctx, spec(idA, "a", 2)) },
		"start":    func() error { return h.Start(ctx, idA) },
		"shutdown": func() error { return h.Shutdown(ctx, idA, time.Second) },
		"destroy":  func() error { return h.Destroy(ctx, idA) },
		"undefine": func() error { return h.Undefine(ctx, idA) },
		"migrate":  func() error { return h.Migrate(ctx, idA, "qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2") },
		"capacity": func() error { _, _, err := h.Capacity(ctx); return err },
	}
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		if err := calls[name](); !errors.Is(err, hypervisor.ErrDisconnected) {
			t.Errorf("%s while libvirtd is down: %v; want ErrDisconnected", name, err)
		}
	}
	if got := running(h); !slices.Equal(got, []string{"a 1", "b 1"}) {
		t.Fatalf("qemu while libvirtd is down = %q; want both still running", got)
	}
	if !h.Crash(idB) {
		t.Fatal("Crash while libvirtd is down found no qemu")
	}
	h.StartLibvirtd()
	if !h.Connected() {
		t.Fatal("not Connected after libvirtd came back")
	}
	if got := events(h); !slices.Equal(got, []string{"disconnected", "reconnected"}) {
		t.Errorf("events = %q; want disconnected, reconnected (the crash event was lost)", got)
	}
	want := map[string]string{"a": "running/booted 1", "b": "crashed/crashed 1"}
	if got := states(t, h); !reflect.DeepEqual(got, want) {
		t.Errorf("states after libvirtd restart = %v, want %v", got, want)
	}
}

// TestPowerLoss: every qemu dies with the host, the agent's session ends,
// nothing answers until power and a new session are back; definitions are
// kept (shut off, reason unknown) or lost.
func TestPowerLoss(t *testing.T) {
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keep definitions %v", keep), func(t *testing.T) {
			ctx := context.Background()
			c := &clock{now: t0}
			h := newHost(t, c, nil, "h1", "")
			must(t, h.Define(ctx, spec(idA, "a", 1)))
			must(t, h.Start(ctx, idA))
			must(t, h.AddForeign(idF, "other", true))
			old := h.Events()
			for len(old) > 0 {
				<-old
			}

			h.PowerOff(keep)
			if len(h.Running()) != 0 || h.Connected() || h.Powered() {
				t.Fatalf("after power off: running %+v, connected %v, powered %v", h.Running(), h.Connected(), h.Powered())
			}
			if _, ok := <-old; ok {
				t.Fatal("the old session's Events is not closed")
			}
			if _, err := h.List(ctx); !errors.Is(err, hypervisor.ErrDisconnected) {
				t.Fatalf("List without power: %v; want ErrDisconnected", err)
			}
			h.StartLibvirtd() // no power: nothing starts
			if err := h.Open(); !errors.Is(err, hypervisor.ErrDisconnected) {
				t.Fatalf("Open without power: %v; want ErrDisconnected", err)
			}
			h.PowerOn()
			if _, err := h.List(ctx); !errors.Is(err, hypervisor.ErrDisconnected) {
				t.Fatalf("List before the new agent opens its session: %v; want ErrDisconnected", err)
			}
			must(t, h.Open())
			want := map[string]string{}
			if keep {
				want = map[string]string{"a": "stopped/unknown 1", "f": "stopped/unknown -"}
			}
			if got := states(t, h); !reflect.DeepEqual(got, want) {
				t.Fatalf("states after power on = %v, want %v", got, want)
			}
			if got := events(h); len(got) != 0 {
				t.Fatalf("the new session starts with events %q", got)
			}
			if len(h.Running()) != 0 {
				t.Fatalf("qemu after power on without a start: %+v", h.Running())
			}
		})
	}
}

// TestFaultHook: a chosen call fails before it has any effect, or after
// (the reply lost); the hook sees host, op and uuid.
func TestFaultHook(t *testing.T) {
	injected := errors.New("injected")
	tests := []struct {
		name        string
		applied     bool
		wantRunning []string
		wantEvents  []string
	}{
		{"fails before the effect", false, nil, nil},
		{"fails after the effect", true, []string{"a 1"}, []string{"started/booted a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := &clock{now: t0}
			var seen []sim.Call
			h := newHost(t, c, nil, "h1", "", func(cfg *sim.HypervisorConfig) {
				cfg.Fault = func(call sim.Call) sim.Fault {
					seen = append(seen, call)
					if call.Op == sim.OpStart {
						return sim.Fault{Err: injected, Applied: tt.applied}
					}
					return sim.Fault{}
				}
			})
			must(t, h.Define(ctx, spec(idA, "a", 1)))
			events(h)
			if err := h.Start(ctx, idA); !errors.Is(err, injected) {
				t.Fatalf("Start: %v; want the injected error", err)
			}
			if got := running(h); !slices.Equal(got, tt.wantRunning) {
				t.Errorf("running = %q, want %q", got, tt.wantRunning)
			}
			if got := events(h); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events = %q, want %q", got, tt.wantEvents)
			}
			want := []sim.Call{{Host: "h1", Op: sim.OpDefine, UUID: idA}, {Host: "h1", Op: sim.OpStart, UUID: idA}}
			if !reflect.DeepEqual(seen, want) {
				t.Errorf("hook saw %+v, want %+v", seen, want)
			}
		})
	}
}

// TestCancelledContext: a call with a dead context fails and changes nothing.
func TestCancelledContext(t *testing.T) {
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "")
	must(t, h.Define(context.Background(), spec(idA, "a", 1)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Start(ctx, idA); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with a cancelled context: %v", err)
	}
	if len(h.Running()) != 0 {
		t.Fatalf("started despite the cancelled context: %+v", h.Running())
	}
}

// TestEventsDropOldest: a full buffer never blocks the caller; the oldest
// event goes and is counted, as in the driver.
func TestEventsDropOldest(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "", func(cfg *sim.HypervisorConfig) { cfg.EventBuffer = 2 })
	must(t, h.Define(ctx, spec(idA, "a", 1)))
	must(t, h.Start(ctx, idA))
	must(t, h.Destroy(ctx, idA))
	if got := events(h); !slices.Equal(got, []string{"started/booted a", "stopped/destroyed a"}) {
		t.Errorf("events = %q; want the two newest", got)
	}
	if got := h.DroppedEvents(); got != 1 {
		t.Errorf("dropped = %d, want 1", got)
	}
	must(t, h.Open())
	if got := h.DroppedEvents(); got != 0 {
		t.Errorf("dropped in a new session = %d, want 0", got)
	}
}

// TestCapacity reports the construction parameters.
func TestCapacity(t *testing.T) {
	c := &clock{now: t0}
	h := newHost(t, c, nil, "h1", "")
	cpus, mem, err := h.Capacity(context.Background())
	if err != nil || cpus != 8 || mem != 16384 {
		t.Fatalf("Capacity = %d, %d, %v; want 8, 16384", cpus, mem, err)
	}
}

// migrationWorld is two hosts, src (10.0.0.1) and dst (10.0.0.2), plus a
// third (10.0.0.3), with a running domain a on src.
type migrationWorld struct {
	c             *clock
	w             *world
	src, dst, oth *sim.Hypervisor
}

func newMigrationWorld(t *testing.T, decide sim.MigrationDecider) *migrationWorld {
	t.Helper()
	m := &migrationWorld{c: &clock{now: t0}, w: &world{hosts: map[string]*sim.Hypervisor{}, down: map[[2]string]bool{}}}
	withDecider := func(cfg *sim.HypervisorConfig) { cfg.Migration = decide }
	m.src = newHost(t, m.c, m.w, "src", "10.0.0.1", withDecider)
	m.dst = newHost(t, m.c, m.w, "dst", "10.0.0.2")
	m.oth = newHost(t, m.c, m.w, "oth", "10.0.0.3")
	ctx := context.Background()
	must(t, m.src.Define(ctx, spec(idA, "a", 7)))
	must(t, m.src.Start(ctx, idA))
	m.c.advance(time.Minute)
	events(m.src)
	return m
}

// where says which hosts run a, read at one instant.
func (m *migrationWorld) where() []string {
	var out []string
	snap := sim.SnapshotRunning(m.src, m.dst, m.oth)
	for _, name := range []string{"src", "dst", "oth"} {
		for _, q := range snap[name] {
			if q.UUID == idA {
				out = append(out, name)
			}
		}
	}
	return out
}

// TestMigration: every outcome, and the preconditions libvirt checks; after
// each the VM runs on exactly the expected host (never on two).
func TestMigration(t *testing.T) {
	const destURI, migURI = "qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2"
	tests := []struct {
		name      string
		outcome   sim.MigrationOutcome
		setup     func(t *testing.T, m *migrationWorld)
		destURI   string
		migURI    string
		wantErr   error // errors.Is; errAny: any error
		wantWhere string
		wantSrc   []string // source events
		wantDst   []string // destination events
		decided   bool     // the decider was asked
	}{
		{name: "succeeds", outcome: sim.MigrationSucceeds, wantWhere: "dst", decided: true,
			wantSrc: []string{"suspended/migrated a", "stopped/migrated a", "undefined/removed a"},
			wantDst: []string{"started/migrated a", "resumed/migrated a", "defined/added a"}},
		{name: "fails before", outcome: sim.MigrationFailsBefore, wantErr: errAny, wantWhere: "src", decided: true},
		{name: "fails during", outcome: sim.MigrationFailsDuring, wantErr: errAny, wantWhere: "src", decided: true},
		{name: "succeeds but the reply is lost", outcome: sim.MigrationReplyLost, wantErr: hypervisor.ErrDisconnected,
			wantWhere: "dst", decided: true,
			wantSrc: []string{"disconnected", "reconnected"},
			wantDst: []string{"started/migrated a", "resumed/migrated a", "defined/added a"}},
		{name: "destination libvirtd down", setup: func(_ *testing.T, m *migrationWorld) { m.dst.StopLibvirtd() },
			wantErr: errAny, wantWhere: "src"},
		{name: "destination powered off", setup: func(_ *testing.T, m *migrationWorld) { m.dst.PowerOff(true) },
			wantErr: errAny, wantWhere: "src"},
		{name: "migration link down", setup: func(_ *testing.T, m *migrationWorld) { m.w.down[[2]string{"src", "dst"}] = true },
			wantErr: errAny, wantWhere: "src"},
		{name: "no host at the destination", destURI: "qemu+tcp://10.0.0.9/system", migURI: "tcp://10.0.0.9",
			wantErr: errAny, wantWhere: "src"},
		{name: "migration stream to another host", migURI: "tcp://10.0.0.3",
			wantErr: errAny, wantWhere: "src"},
		{name: "to itself", destURI: "qemu+tcp://10.0.0.1/system", migURI: "tcp://10.0.0.1",
			wantErr: errAny, wantWhere: "src"},
		{name: "missing uris", destURI: "-", migURI: "-", wantErr: errAny, wantWhere: "src"},
		{name: "the destination already runs the vm",
			setup: func(t *testing.T, m *migrationWorld) {
				must(t, m.dst.Define(context.Background(), spec(idA, "a", 6)))
				must(t, m.dst.Start(context.Background(), idA))
				events(m.dst)
			},
			wantErr: errAny, wantWhere: "src+dst"}, // a split brain set up by hand: the migration must not make it worse
		{name: "the destination has a stopped stale definition: replaced",
			setup: func(t *testing.T, m *migrationWorld) {
				must(t, m.dst.Define(context.Background(), spec(idA, "a", 6)))
				events(m.dst)
			},
			wantWhere: "dst", decided: true,
			wantSrc: []string{"suspended/migrated a", "stopped/migrated a", "undefined/removed a"},
			wantDst: []string{"started/migrated a", "resumed/migrated a", "defined/updated a"}},
		{name: "the domain is not running",
			setup: func(t *testing.T, m *migrationWorld) {
				must(t, m.src.Destroy(context.Background(), idA))
				events(m.src)
			},
			wantErr: errAny, wantWhere: ""},
		{name: "the domain does not exist",
			setup: func(t *testing.T, m *migrationWorld) {
				must(t, m.src.Undefine(context.Background(), idA))
				events(m.src)
			},
			wantErr: hypervisor.ErrNotFound, wantWhere: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked []sim.Migration
			m := newMigrationWorld(t, func(mig sim.Migration) sim.MigrationOutcome {
				asked = append(asked, mig)
				return tt.outcome
			})
			m.src.SetIgnoresACPI(idA, true)
			if tt.setup != nil {
				tt.setup(t, m)
			}
			dest, mig := destURI, migURI
			if tt.destURI != "" {
				dest = tt.destURI
			}
			if tt.migURI != "" {
				mig = tt.migURI
			}
			if dest == "-" {
				dest, mig = "", ""
			}
			err := m.src.Migrate(context.Background(), idA, dest, mig)
			checkErr(t, "Migrate", err, tt.wantErr)
			if got := strings.Join(m.where(), "+"); got != tt.wantWhere {
				t.Fatalf("a runs on %q, want %q", got, tt.wantWhere)
			}
			if tt.decided != (len(asked) == 1) {
				t.Errorf("decider asked %+v; want asked: %v", asked, tt.decided)
			}
			if tt.decided && asked[0] != (sim.Migration{UUID: idA, Generation: 7, From: "src", To: "dst"}) {
				t.Errorf("decider asked about %+v", asked[0])
			}
			if got := events(m.src); !slices.Equal(got, tt.wantSrc) {
				t.Errorf("source events = %q, want %q", got, tt.wantSrc)
			}
			if m.dst.Connected() {
				if got := events(m.dst); !slices.Equal(got, tt.wantDst) {
					t.Errorf("destination events = %q, want %q", got, tt.wantDst)
				}
			}
			if tt.wantWhere != "dst" {
				return
			}
			// The hand-over: gone from the source, running and persistent
			// at the destination with the same metadata, since the hand-over.
			if _, err := m.src.Get(context.Background(), idA); !errors.Is(err, hypervisor.ErrNotFound) {
				t.Errorf("source still has the domain: %v", err)
			}
			recs := m.dst.Domains()
			if len(recs) != 1 || recs[0].State != hypervisor.StateRunning || recs[0].Reason != "migrated" ||
				recs[0].Meta == nil || *recs[0].Meta != (hypervisor.Meta{VMID: idA, Generation: 7}) ||
				!recs[0].Since.Equal(m.c.Now()) || recs[0].Spec.MemoryMiB != 64 {
				t.Fatalf("destination domains = %+v; want a running (migrated), generation 7, since now", recs)
			}
			// The guest still ignores ACPI there, and the definition persists.
			must(t, m.dst.Shutdown(context.Background(), idA, time.Minute))
			if got := states(t, m.dst)["a"]; got != "stopped/destroyed 7" {
				t.Errorf("destination after Shutdown = %s; want stopped/destroyed (acpi ignored, definition kept)", got)
			}
		})
	}
}

// TestMigrationFaultHook: the fault hook can fail a migration before the
// decider is asked, or after the hand-over.
func TestMigrationFaultHook(t *testing.T) {
	injected := errors.New("injected")
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("applied %v", applied), func(t *testing.T) {
			c := &clock{now: t0}
			w := &world{hosts: map[string]*sim.Hypervisor{}, down: map[[2]string]bool{}}
			src := newHost(t, c, w, "src", "10.0.0.1", func(cfg *sim.HypervisorConfig) {
				cfg.Fault = func(call sim.Call) sim.Fault {
					if call.Op == sim.OpMigrate {
						return sim.Fault{Err: injected, Applied: applied}
					}
					return sim.Fault{}
				}
			})
			dst := newHost(t, c, w, "dst", "10.0.0.2")
			must(t, src.Define(context.Background(), spec(idA, "a", 7)))
			must(t, src.Start(context.Background(), idA))
			err := src.Migrate(context.Background(), idA, "qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2")
			if !errors.Is(err, injected) {
				t.Fatalf("Migrate: %v; want the injected error", err)
			}
			on := "src"
			if applied {
				on = "dst"
			}
			got := sim.SnapshotRunning(src, dst)
			if len(got[on]) != 1 || len(got[otherOf(on)]) != 0 {
				t.Fatalf("running = %+v; want a on %s only", got, on)
			}
		})
	}
}

func otherOf(name string) string {
	if name == "src" {
		return "dst"
	}
	return "src"
}

// TestDeterminism: the same call sequence on two fresh worlds gives the same
// events, listings and domain records, although domains live in maps.
func TestDeterminism(t *testing.T) {
	type trace struct {
		Events  map[string][]hypervisor.Event
		Lists   [][]hypervisor.Domain
		Records map[string][]sim.DomainRecord
		Running map[string][]sim.RunningQemu
	}
	script := func() trace {
		c := &clock{now: t0}
		w := &world{hosts: map[string]*sim.Hypervisor{}, down: map[[2]string]bool{}}
		n := 0
		decide := func(sim.Migration) sim.MigrationOutcome {
			n++
			return sim.MigrationOutcome(n % 4)
		}
		h1 := newHost(t, c, w, "h1", "10.0.0.1", func(cfg *sim.HypervisorConfig) { cfg.Migration = decide })
		h2 := newHost(t, c, w, "h2", "10.0.0.2")
		ctx := context.Background()
		var tr trace
		for i := range 24 {
			id := fmt.Sprintf("%08x-0000-0000-0000-%012x", (i*7919)%97, i)
			must(t, h1.Define(ctx, spec(id, fmt.Sprintf("vm%d", i), uint64(i+1))))
			c.advance(time.Millisecond)
			if i%3 != 0 {
				must(t, h1.Start(ctx, id))
			}
		}
		must(t, h1.AddForeign(idF, "foreign", true))
		l, _ := h1.List(ctx)
		tr.Lists = append(tr.Lists, l)
		for i := range 24 {
			id := fmt.Sprintf("%08x-0000-0000-0000-%012x", (i*7919)%97, i)
			c.advance(time.Second)
			switch i % 4 {
			case 0:
				h1.Crash(id)
			case 1:
				_ = h1.Migrate(ctx, id, "qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2")
			case 2:
				must(t, h1.Shutdown(ctx, id, time.Second))
			case 3:
				_ = h1.Migrate(ctx, id, "qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2")
			}
		}
		h2.StopLibvirtd()
		h2.StartLibvirtd()
		tr.Events = map[string][]hypervisor.Event{"h1": drainRaw(h1), "h2": drainRaw(h2)}
		h1.PowerOff(true)
		h1.PowerOn()
		must(t, h1.Open())
		for _, h := range []*sim.Hypervisor{h1, h2} {
			l, err := h.List(ctx)
			must(t, err)
			tr.Lists = append(tr.Lists, l)
		}
		tr.Records = map[string][]sim.DomainRecord{"h1": h1.Domains(), "h2": h2.Domains()}
		tr.Running = sim.SnapshotRunning(h1, h2)
		return tr
	}
	first, second := script(), script()
	if len(first.Events["h1"]) == 0 || len(first.Events["h2"]) == 0 || len(first.Running["h2"]) == 0 {
		t.Fatalf("the script did too little to compare: %+v", first)
	}
	if !reflect.DeepEqual(first, second) {
		t.Fatalf("two runs of one script differ:\nfirst  %+v\nsecond %+v", first, second)
	}
	for _, l := range first.Lists {
		if !slices.IsSortedFunc(l, func(a, b hypervisor.Domain) int { return strings.Compare(a.UUID, b.UUID) }) {
			t.Fatalf("List not sorted by uuid: %+v", l)
		}
	}
}
