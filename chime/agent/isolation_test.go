package agent

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// countingWatchdog counts pets and closes.
type countingWatchdog struct {
	pets, closes int
	timeout      time.Duration // of the last pet
}

func (w *countingWatchdog) Pet(timeout time.Duration) error {
	w.pets++
	w.timeout = timeout
	return nil
}
func (w *countingWatchdog) Close() error { w.closes++; return nil }

func newIsolated(t *testing.T, lease time.Duration, vms ...api.DesiredVM) (*stepped, *countingWatchdog) {
	t.Helper()
	log := &callLog{}
	st := &stepped{log: log, srv: newScriptedServers(log, vms...), hv: newRecordingHV(log), clk: clock.NewManual(t0)}
	cfg := testConfig(t, "10.0.0.1:4650")
	cfg.IsolationResponse, cfg.IsolationLease = structs.IsolationStop, lease
	wd := &countingWatchdog{}
	a, err := New(cfg, st.hv, WithServers(st.srv), WithClock(st.clk), WithRandom(rand.NewChaCha8([32]byte{})),
		WithInlineShutdowns(), WithWatchdog(wd))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	st.a = a
	return st, wd
}

func running(t *testing.T, s *stepped, id string) bool {
	t.Helper()
	st, _ := s.hv.state(id)
	return st == hypervisor.StateRunning
}

// The lease's life on the agent: VMs run while heartbeats are
// acknowledged; once none was for the lease they are killed and nothing
// starts; an acknowledged heartbeat and a sync after it end the isolation.
func TestIsolationStopsVMsAndStartsNoneUntilSynced(t *testing.T) {
	ctx := context.Background()
	s, wd := newIsolated(t, 20*time.Second, dvm(idA, "a", structs.DesiredRunning, 3))
	a := s.a
	if err := a.RegisterOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if !running(t, s, idA) {
		t.Fatal("vm not started")
	}
	a.IsolationOnce(ctx)
	if wd.pets == 0 {
		t.Fatal("watchdog not petted while the lease is valid")
	}

	// The servers go away: the lease runs 20 s from the acknowledged send.
	s.srv.setDown(true)
	s.clk.Advance(19 * time.Second)
	_ = a.HeartbeatOnce(ctx)
	a.IsolationOnce(ctx)
	if !running(t, s, idA) || a.Isolated() {
		t.Fatal("isolated before the lease ran out")
	}
	s.clk.Advance(2 * time.Second)
	pets := wd.pets
	a.IsolationOnce(ctx)
	if running(t, s, idA) {
		t.Fatal("vm still runs after the lease ran out")
	}
	if !a.Isolated() {
		t.Fatal("not isolated after the lease ran out")
	}
	if wd.pets != pets+1 {
		t.Fatalf("watchdog pets %d → %d: an isolated agent whose pass killed every VM keeps petting", pets, wd.pets)
	}
	// Nothing starts while isolated, whatever the desired state says.
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if running(t, s, idA) {
		t.Fatal("an isolated agent started a vm")
	}

	// Back: the heartbeat is acknowledged, then a sync, then the VM starts.
	s.srv.setDown(false)
	s.clk.Advance(5 * time.Second)
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Isolated() {
		t.Fatal("still isolated after an acknowledged heartbeat and a sync")
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if !running(t, s, idA) {
		t.Fatal("vm not started again after the isolation ended")
	}
}

// A heartbeat acknowledged without a sync after it does not end the
// isolation: the servers may have moved the VMs meanwhile.
func TestIsolationNeedsASyncAfterTheAcknowledgement(t *testing.T) {
	ctx := context.Background()
	s, _ := newIsolated(t, 10*time.Second, dvm(idA, "a", structs.DesiredRunning, 3))
	a := s.a
	for _, step := range []func(context.Context) error{a.RegisterOnce, a.SyncOnce} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatal(err)
	}
	s.srv.setDown(true)
	s.clk.Advance(11 * time.Second)
	a.IsolationOnce(ctx)
	if running(t, s, idA) {
		t.Fatal("vm runs after the lease")
	}
	// Desired-state queries fail while heartbeats get through.
	s.srv.setDown(false)
	s.srv.mu.Lock()
	s.srv.noDesired = true
	s.srv.mu.Unlock()
	_ = a.HeartbeatOnce(ctx)
	if !a.Isolated() {
		t.Fatal("isolation ended without a sync after the acknowledgement")
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if running(t, s, idA) {
		t.Fatal("started a vm on an acknowledgement alone")
	}
}

// With the default keep, losing the servers changes nothing.
func TestIsolationKeepKeepsVMs(t *testing.T) {
	ctx := context.Background()
	s := newStepped(t, 1, []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 3)})
	a := s.a
	for _, step := range []func(context.Context) error{a.RegisterOnce, a.SyncOnce} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	s.srv.setDown(true)
	s.clk.Advance(time.Hour)
	a.IsolationOnce(ctx)
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if !running(t, s, idA) || a.Isolated() {
		t.Fatal("a keep agent stopped its vm")
	}
}

func TestIsolationConfigValidated(t *testing.T) {
	tests := []struct {
		name     string
		response string
		lease    time.Duration
		watchdog string
		wantErr  string
		bound    time.Duration // --isolation-stop-bound (0: the default)
	}{
		{"keep", "keep", 0, "", "", 0},
		{"stop", "stop", 30 * time.Second, "/dev/watchdog", "", 0},
		{"bad response", "halt", 30 * time.Second, "", "--isolation-response", 0},
		{"stop without lease", "stop", 0, "", "--isolation-lease", 0},
		{"watchdog without stop", "keep", 0, "/dev/watchdog", "--watchdog", 0},
		{"relative watchdog", "stop", time.Minute, "watchdog", "--watchdog", 0},
		{"stop bound 1s", "stop", 5 * time.Second, "", "", time.Second},
		{"stop bound too small", "stop", 5 * time.Second, "", "--isolation-stop-bound", 100 * time.Millisecond},
		{"stop bound too large", "stop", 5 * time.Second, "", "--isolation-stop-bound", time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Name, cfg.DataDir, cfg.Servers, cfg.Advertise = "hv1", "/var/lib/chime", []string{"10.0.0.1:4650"}, "10.0.0.11"
			cfg.InsecureNoTLS, cfg.InsecureNoGossipKey = true, true // TLS material is not what this test is about
			cfg.IsolationResponse, cfg.IsolationLease, cfg.WatchdogDevice = tc.response, tc.lease, tc.watchdog
			if tc.bound != 0 {
				cfg.IsolationStopBound = tc.bound
			}
			err := cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

// A clean stop disarms the watchdog only when no chime VM runs: the
// servers keep counting the lease against a stopped agent.
func TestStopWatchdogOnlyWhenNothingRuns(t *testing.T) {
	ctx := context.Background()
	s, wd := newIsolated(t, 20*time.Second, dvm(idA, "a", structs.DesiredRunning, 3))
	a := s.a
	for _, step := range []func(context.Context) error{a.RegisterOnce, a.SyncOnce} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	a.stopWatchdog()
	if wd.closes != 0 {
		t.Fatal("watchdog disarmed while a vm runs")
	}
	s.srv.setDesired()
	if err := a.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	a.stopWatchdog()
	if wd.closes != 1 {
		t.Fatalf("watchdog closes %d with nothing running, want 1", wd.closes)
	}
}

// The servers' margin reaches the agent in every answer: the watchdog is
// sized lease/4 + margin/2, the stop budget is min(stop bound, margin),
// and a stop that takes longer than the budget is reported as a fault
// until the lease is valid again.
func TestIsolationLearnsTheMarginAndBoundsItsStop(t *testing.T) {
	ctx := context.Background()
	s, wd := newIsolated(t, 20*time.Second, dvm(idA, "a", structs.DesiredRunning, 3))
	a := s.a
	a.cfg.IsolationStopBound = time.Second
	s.srv.margin = 2 * time.Second
	for _, step := range []func(context.Context) error{a.RegisterOnce, a.SyncOnce} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatal(err)
	}
	a.IsolationOnce(ctx)
	if want := 20*time.Second/4 + time.Second; wd.timeout != want {
		t.Errorf("watchdog timeout %s, want lease/4 + margin/2 = %s", wd.timeout, want)
	}
	if got := a.stopBudget(); got != time.Second {
		t.Errorf("stop budget %s, want min(bound 1s, margin 2s) = 1s", got)
	}
	if got := s.srv.lastHeartbeat(); len(got.Faults) != 0 {
		t.Errorf("faults %v while the lease is valid", got.Faults)
	}

	// Isolated with a libvirt that fails every destroy for a while.
	s.hv.mu.Lock()
	s.hv.failDestroy[idA] = 1000
	s.hv.mu.Unlock()
	s.srv.setDown(true)
	s.clk.Advance(20 * time.Second)
	step := a.isolationCheckEvery()
	if step != 250*time.Millisecond {
		t.Errorf("check every %s, want budget/4 = 250ms", step)
	}
	var overrunAt time.Duration
	for i := 0; i < 8 && overrunAt == 0; i++ {
		a.IsolationOnce(ctx)
		if len(a.isolationFaults()) > 0 {
			overrunAt = time.Duration(i) * step
		}
		s.clk.Advance(step)
	}
	if overrunAt < time.Second-step || overrunAt > time.Second+step {
		t.Fatalf("overrun reported %s after the lease ran out, want about the 1s budget", overrunAt)
	}
	t.Logf("stop overrun reported %s after the lease ran out (budget 1s, checks every %s)", overrunAt, step)
	s.hv.mu.Lock()
	s.hv.failDestroy[idA] = 0
	s.hv.mu.Unlock()
	a.IsolationOnce(ctx)
	if running(t, s, idA) {
		t.Fatal("vm still runs once destroy works again")
	}
	if f := a.isolationFaults(); len(f) != 1 || f[0] != faultStopOverrun {
		t.Errorf("faults %v after the late stop, want the overrun until the lease is valid again", f)
	}
	s.srv.setDown(false)
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.srv.lastHeartbeat(); !slices.Contains(got.Faults, faultStopOverrun) {
		t.Errorf("heartbeat faults %v: the overrun is reported once the servers are reached", got.Faults)
	}
	a.IsolationOnce(ctx)
	if f := a.isolationFaults(); len(f) != 0 {
		t.Errorf("faults %v with a valid lease again", f)
	}
}

// The agent registers its stop bound, and sizes its start lease from it.
func TestIsolationStopBoundRegistered(t *testing.T) {
	for _, tc := range []struct {
		bound, wantReg, wantStart time.Duration
	}{
		{0, structs.DefaultStopBound, 10 * time.Second}, // 20/4 + 10/2
		{time.Second, time.Second, 5500 * time.Millisecond},
		{40 * time.Second, 40 * time.Second, 20 * time.Second}, // at most the lease
	} {
		cfg := Config{IsolationResponse: structs.IsolationStop, IsolationLease: 20 * time.Second, IsolationStopBound: tc.bound}
		if got := cfg.isolationStopBound(); got != tc.wantReg {
			t.Errorf("bound %s: registered %s, want %s", tc.bound, got, tc.wantReg)
		}
		if got := startLease(cfg.IsolationLease, cfg.stopBound()); got != tc.wantStart {
			t.Errorf("bound %s: start lease %s, want %s", tc.bound, got, tc.wantStart)
		}
	}
	if got := (Config{IsolationResponse: structs.IsolationKeep, IsolationStopBound: time.Second}).isolationStopBound(); got != 0 {
		t.Errorf("keep: registered stop bound %s, want 0", got)
	}
}
