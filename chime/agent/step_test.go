package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// errUnreachable is what a Servers call returns when no server answered.
var errUnreachable = errors.New("dial tcp 10.0.0.1:4650: connect: no route to host")

// scriptedServers is an in-process Servers: it records every call in the
// shared log, in order, with the request as JSON, and answers from its
// script. It checks credentials as the servers do.
type scriptedServers struct {
	log *callLog

	mu         sync.Mutex
	desired    api.DesiredState
	down       bool    // every call fails as if no server answered
	noDesired  bool    // desired-state queries fail as if no server answered
	reportErrs []error // answers of the next ReportMigration calls (then nil)
	node       string  // credentials as last set
	secret     string
	registered string // the secret the node registered with
	heartbeats []api.HeartbeatRequest
	margin     time.Duration // the lease margin the answers carry (0: none, an older server)
}

func newScriptedServers(log *callLog, vms ...api.DesiredVM) *scriptedServers {
	return &scriptedServers{log: log, desired: api.DesiredState{ManagementState: structs.NodeEnabled, VMs: vms, Index: 10}}
}

func (s *scriptedServers) record(what string, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	s.log.add("server:%s %s", what, data)
}

// answer fails when the servers are down or the credentials are not the
// registered ones. Call with s.mu held.
func (s *scriptedServers) answer() error {
	if s.down {
		return errUnreachable
	}
	if s.node == "" || s.secret != s.registered {
		return &api.Error{Status: http.StatusForbidden, Message: "unknown node or bad secret"}
	}
	return nil
}

func (s *scriptedServers) Register(_ context.Context, r api.RegisterRequest) (*api.RegisterResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record("register", r)
	if s.down {
		return nil, errUnreachable
	}
	s.registered = r.Secret
	s.desired.NodeID = r.ID
	return &api.RegisterResponse{NodeID: r.ID, Timing: api.Timing{HeartbeatInterval: 5 * time.Second, MissedHeartbeats: 3, LeaseMargin: s.margin}}, nil
}

func (s *scriptedServers) Desired(_ context.Context, q api.QueryOptions) (*api.DesiredState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record("desired", q)
	if err := s.answer(); err != nil {
		return nil, err
	}
	if s.noDesired {
		return nil, errUnreachable
	}
	ds := s.desired
	ds.VMs = slices.Clone(ds.VMs)
	return &ds, nil
}

func (s *scriptedServers) Heartbeat(_ context.Context, hb api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record("heartbeat", hb)
	if err := s.answer(); err != nil {
		return nil, err
	}
	s.heartbeats = append(s.heartbeats, hb)
	return &api.HeartbeatResponse{Timing: api.Timing{HeartbeatInterval: 5 * time.Second, MissedHeartbeats: 3, LeaseMargin: s.margin}}, nil
}

func (s *scriptedServers) ReportMigration(_ context.Context, r api.MigrationReport) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record("migrated", r)
	if err := s.answer(); err != nil {
		return err
	}
	if len(s.reportErrs) > 0 {
		err := s.reportErrs[0]
		s.reportErrs = s.reportErrs[1:]
		return err
	}
	return nil
}

func (s *scriptedServers) SetCredentials(node, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.node, s.secret = node, secret
	s.log.add("server:credentials %q %q", node, secret)
}

func (s *scriptedServers) Addrs() []string { return []string{"http://10.0.0.1:4650"} }

func (s *scriptedServers) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

func (s *scriptedServers) setDesired(vms ...api.DesiredVM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.desired.VMs = vms
	s.desired.Index++
}

func (s *scriptedServers) lastHeartbeat() api.HeartbeatRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.heartbeats) == 0 {
		return api.HeartbeatRequest{}
	}
	return s.heartbeats[len(s.heartbeats)-1]
}

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// stepped is an agent built for stepping: scripted servers, a manual
// clock, a seeded random source, shutdowns inline.
type stepped struct {
	a   *Agent
	srv *scriptedServers
	hv  *recordingHV
	clk *clock.Manual
	log *callLog
}

func newStepped(t *testing.T, seed uint64, vms []api.DesiredVM, domains ...hypervisor.Domain) *stepped {
	t.Helper()
	log := &callLog{}
	st := &stepped{log: log, srv: newScriptedServers(log, vms...), hv: newRecordingHV(log, domains...), clk: clock.NewManual(t0)}
	var seedBytes [32]byte
	seedBytes[0] = byte(seed)
	a, err := New(testConfig(t, "10.0.0.1:4650"), st.hv, WithServers(st.srv), WithClock(st.clk),
		WithRandom(rand.NewChaCha8(seedBytes)), WithInlineShutdowns())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	st.a = a
	return st
}

// libvirtTouched lists the libvirt calls recorded so far.
func (s *stepped) libvirtTouched() []string {
	var out []string
	for _, e := range s.log.snapshot() {
		if strings.HasPrefix(e, "hv:") {
			out = append(out, e)
		}
	}
	return out
}

func actionKinds(res reconcile.PassResult) []string {
	var out []string
	for _, a := range res.Actions {
		out = append(out, string(a.Kind)+" "+a.VMID)
	}
	return out
}

// steppedScenario is the basic life of a stepped agent: nothing before the
// first sync, then a VM started, reported, stopped and reported again. It
// returns everything the servers and libvirt saw, in order.
func steppedScenario(t *testing.T, seed uint64) []string {
	t.Helper()
	ctx := context.Background()
	// Two VMs: the in-memory libvirt lists in map order, and what the
	// servers see must not depend on it.
	s := newStepped(t, seed, []api.DesiredVM{dvm(idB, "b", structs.DesiredRunning, 3), dvm(idA, "a", structs.DesiredRunning, 7)})
	a := s.a

	// Before the first sync nothing starts, nothing is reported.
	if _, err := a.ReconcileOnce(ctx); !errors.Is(err, reconcile.ErrNotSynced) {
		t.Fatalf("pass before any sync: %v; want ErrNotSynced", err)
	}
	if err := a.HeartbeatOnce(ctx); !errors.Is(err, ErrNotSettled) {
		t.Fatalf("heartbeat before the reconciler settled: %v; want ErrNotSettled", err)
	}
	if err := a.SyncOnce(ctx); !RegistrationLost(err) {
		t.Fatalf("sync before registration: %v; want the servers to refuse the credentials", err)
	}
	if err := a.RegisterOnce(ctx); err != nil {
		t.Fatalf("register: %v", err)
	}
	s.srv.setDown(true)
	if err := a.SyncOnce(ctx); err == nil || RegistrationLost(err) {
		t.Fatalf("sync with the servers down: %v; want an unreachable error", err)
	}
	if _, err := a.ReconcileOnce(ctx); !errors.Is(err, reconcile.ErrNotSynced) {
		t.Fatalf("pass after a failed sync: %v; want ErrNotSynced", err)
	}
	if got := s.libvirtTouched(); len(got) != 0 {
		t.Fatalf("libvirt changed before the first successful sync: %q", got)
	}

	// The first sync lets the reconciler start A and B.
	s.srv.setDown(false)
	s.clk.Advance(90 * time.Second)
	if err := a.SyncOnce(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if at := a.Status(ctx).Servers.LastContact; !at.Equal(t0.Add(90 * time.Second)) {
		t.Fatalf("last contact at %v; want %v, on the injected clock", at, t0.Add(90*time.Second))
	}
	if req := a.TakeRequests(); !req.Reconcile {
		t.Fatalf("a new desired state did not ask for a pass: %+v", req)
	}
	res, err := a.ReconcileOnce(ctx)
	if err != nil {
		t.Fatalf("pass: %v", err)
	}
	if want := []string{"define " + idA, "define " + idB, "start " + idA, "start " + idB}; !slices.Equal(actionKinds(res), want) {
		t.Fatalf("pass actions = %q, want %q", actionKinds(res), want)
	}
	for _, id := range []string{idA, idB} {
		if st, _ := s.hv.state(id); st != hypervisor.StateRunning {
			t.Fatalf("%s is %q after the pass; want running", id, st)
		}
	}
	if req := a.TakeRequests(); !req.Heartbeat || req.Reconcile {
		t.Fatalf("requests after a pass that started VMs = %+v; want an early heartbeat only", req)
	}
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	want := []structs.VMObservation{{VMID: idA, State: structs.StateRunning, Generation: 7}, {VMID: idB, State: structs.StateRunning, Generation: 3}}
	if hb := s.srv.lastHeartbeat(); hb.NodeID != a.NodeID() || !slices.Equal(hb.VMs, want) {
		t.Fatalf("heartbeat = %+v; want node %s with %+v", hb, a.NodeID(), want)
	}

	// Nothing new: no pass asked for.
	if err := a.SyncOnce(ctx); err != nil {
		t.Fatalf("second sync: %v", err)
	}
	if req := a.TakeRequests(); req.Reconcile {
		t.Fatalf("an unchanged desired state asked for a pass: %+v", req)
	}

	// Stop A: the shutdown is done when the pass returns (inline), and
	// asks for the pass that sees it stopped.
	s.srv.setDesired(dvm(idB, "b", structs.DesiredRunning, 3), dvm(idA, "a", structs.DesiredStopped, 7))
	if err := a.SyncOnce(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if _, err := a.ReconcileOnce(ctx); err != nil {
		t.Fatalf("pass: %v", err)
	}
	if st, _ := s.hv.state(idA); st != hypervisor.StateStopped {
		t.Fatalf("A is %q when the pass returned; want stopped (inline shutdown)", st)
	}
	if req := a.TakeRequests(); !req.Reconcile || !req.Heartbeat {
		t.Fatalf("requests after a shutdown = %+v; want a pass and an early heartbeat", req)
	}
	if err := a.HeartbeatOnce(ctx); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	want = []structs.VMObservation{{VMID: idA, State: structs.StateStopped, Generation: 7}, {VMID: idB, State: structs.StateRunning, Generation: 3}}
	if hb := s.srv.lastHeartbeat(); !slices.Equal(hb.VMs, want) {
		t.Fatalf("heartbeat VMs = %+v; want %+v", hb.VMs, want)
	}
	return s.log.snapshot()
}

// TestSteppedAgent steps an agent with no HTTP, no Raft and no libvirt:
// register, sync, reconcile, heartbeat; and runs the same steps twice to
// show that the same seed gives the same calls, byte for byte.
func TestSteppedAgent(t *testing.T) {
	first := steppedScenario(t, 1)
	again := steppedScenario(t, 1)
	if !slices.Equal(first, again) {
		t.Fatalf("same seed, different calls:\n%s\n--- then ---\n%s", strings.Join(first, "\n"), strings.Join(again, "\n"))
	}

	// The order the servers saw things in.
	var kinds []string
	for _, e := range first {
		kind, _, _ := strings.Cut(e, " ")
		kinds = append(kinds, kind)
	}
	wantKinds := []string{
		"server:desired",                                              // before registration: refused
		"server:credentials", "server:register", "server:credentials", // register, then send credentials
		"server:desired",                                                   // servers down
		"server:desired", "hv:define", "hv:define", "hv:start", "hv:start", // first sync, first pass
		"server:heartbeat",
		"server:desired",                // nothing new
		"server:desired", "hv:shutdown", // stop A
		"server:heartbeat",
	}
	if !slices.Equal(kinds, wantKinds) {
		t.Fatalf("calls:\n%s\nwant kinds %q", strings.Join(first, "\n"), wantKinds)
	}

	// The node id is libvirt's host UUID (the same for every seed); the
	// secret comes from the seeded source: another seed gives another.
	other := steppedScenario(t, 2)
	if idOf(t, first) != testHostUUID || idOf(t, other) != testHostUUID {
		t.Fatalf("node ids %s and %s; want the host UUID %s for both seeds", idOf(t, first), idOf(t, other), testHostUUID)
	}
	if secretOf(t, first) == secretOf(t, other) || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(secretOf(t, first)) {
		t.Fatalf("secrets %q and %q; want 64 hex digits, different per seed", secretOf(t, first), secretOf(t, other))
	}
}

func registration(t *testing.T, calls []string) api.RegisterRequest {
	t.Helper()
	for _, c := range calls {
		if body, ok := strings.CutPrefix(c, "server:register "); ok {
			var r api.RegisterRequest
			if err := json.Unmarshal([]byte(body), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	t.Fatalf("no registration in %q", calls)
	return api.RegisterRequest{}
}

func idOf(t *testing.T, calls []string) string     { return registration(t, calls).ID }
func secretOf(t *testing.T, calls []string) string { return registration(t, calls).Secret }

// TestSteppedOrderedMigrationRunsOnTheClock: an ordered live migration and
// the retries of its report run only when the agent's clock is advanced.
func TestSteppedOrderedMigrationRunsOnTheClock(t *testing.T) {
	ctx := context.Background()
	vm := dvm(idA, "a", structs.DesiredRunning, 7)
	vm.Migrate = &api.MigrationOrder{TaskID: "task-1", ToNodeID: "node-2", DestURI: "qemu+tcp://10.0.0.2/system", MigrateURI: "tcp://10.0.0.2"}
	s := newStepped(t, 1, []api.DesiredVM{vm}, dom(idA, "a", hypervisor.StateRunning, 7))
	s.srv.reportErrs = []error{errUnreachable}
	if err := s.a.RegisterOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.a.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	reports := func() int { return strings.Count(strings.Join(s.log.snapshot(), "\n"), "server:migrated") }
	if got := s.libvirtTouched(); len(got) != 0 {
		t.Fatalf("libvirt called before the clock moved: %q", got)
	}
	s.clk.Advance(0) // the migration is due now
	if got := s.libvirtTouched(); !slices.Equal(got, []string{"hv:migrate " + idA}) || reports() != 1 {
		t.Fatalf("after Advance(0): libvirt %q, %d reports; want one migration and one report", got, reports())
	}
	s.clk.Advance(999 * time.Millisecond)
	if reports() != 1 {
		t.Fatalf("report retried before its 1 s back-off: %q", s.log.snapshot())
	}
	s.clk.Advance(time.Millisecond)
	if reports() != 2 {
		t.Fatalf("report not retried after its 1 s back-off: %q", s.log.snapshot())
	}
	var rep api.MigrationReport
	last := s.log.snapshot()[len(s.log.snapshot())-1]
	if err := json.Unmarshal([]byte(strings.TrimPrefix(last, "server:migrated ")), &rep); err != nil {
		t.Fatalf("last call %q: %v", last, err)
	}
	if rep.TaskID != "task-1" || rep.VMID != idA || rep.OK || rep.Error == "" {
		t.Fatalf("report = %+v; want task-1 failed (the in-memory libvirt refuses migrations)", rep)
	}
	if req := s.a.TakeRequests(); !req.Reconcile || !req.Heartbeat {
		t.Fatalf("requests after the migration ended = %+v; want a pass (hold released) and a heartbeat", req)
	}
	s.clk.Advance(time.Hour)
	if reports() != 2 {
		t.Fatalf("a report was sent again after it succeeded: %q", s.log.snapshot())
	}
}

// TestSteppedLocalDrainBeforeSync: the drain's steps stop the VMs directly
// while the reconciler does not run, without blocking.
func TestSteppedLocalDrainBeforeSync(t *testing.T) {
	ctx := context.Background()
	s := newStepped(t, 1, nil, dom(idA, "a", hypervisor.StateRunning, 7))
	id, err := s.a.BeginDrain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("drain id %q; want 16 hex digits", id)
	}
	if got := s.libvirtTouched(); !slices.Equal(got, []string{"hv:shutdown " + idA}) {
		t.Fatalf("libvirt calls = %q; want A shut down directly", got)
	}
	res, err := s.a.DrainProgress(ctx)
	if err != nil || res.DrainID != id || len(res.Running) != 0 || !slices.Equal(res.Stopped, []string{"chime-a"}) {
		t.Fatalf("drain progress = %+v, %v; want drain %s with chime-a stopped", res, err, id)
	}
	if req := s.a.TakeRequests(); !req.Reconcile || !req.Heartbeat {
		t.Fatalf("requests after the drain = %+v; want a pass and an early heartbeat", req)
	}
	hb, _, err := s.a.BuildHeartbeat(ctx)
	if err != nil || !hb.LocalDrained || hb.LocalDrainID != id {
		t.Fatalf("heartbeat = %+v, %v; want local drain %s", hb, err, id)
	}
}

func TestRegistrationLost(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&api.Error{Status: http.StatusForbidden}, true},
		{&api.Error{Status: http.StatusNotFound}, true},
		{fmt.Errorf("register: %w", &api.Error{Status: http.StatusForbidden}), true},
		{&api.Error{Status: http.StatusInternalServerError}, false},
		{&api.Error{Status: http.StatusServiceUnavailable}, false},
		{errUnreachable, false},
		{nil, false},
	} {
		if got := RegistrationLost(tt.err); got != tt.want {
			t.Errorf("RegistrationLost(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestLocalDrainIsDrainingUntilEveryVMStopped: a local drain whose guest
// keeps running (it ignored the shutdown) is reported draining, with its
// id but without local_drained, in the heartbeat and the local status;
// once every chime domain is stopped it is drained (uniqueness rule 6).
// The heartbeat carries the index of the last accepted desired state.
func TestLocalDrainIsDrainingUntilEveryVMStopped(t *testing.T) {
	ctx := context.Background()
	s := newStepped(t, 1, nil, dom(idA, "a", hypervisor.StateRunning, 7))
	if hb, _, err := s.a.BuildHeartbeat(ctx); err != nil || hb.DesiredIndex != 0 || hb.LocalDrainState != "" || hb.LocalDrained {
		t.Fatalf("heartbeat before any sync and drain = %+v, %v; want desired index 0, no local drain", hb, err)
	}
	id, err := s.a.BeginDrain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.hv.setState(idA, hypervisor.StateRunning) // the guest ignored the shutdown
	for _, check := range []struct {
		state   string
		want    string
		drained bool
	}{
		{hypervisor.StateRunning, structs.LocalDraining, false},
		{hypervisor.StateStopped, structs.LocalDrainDone, true},
		{hypervisor.StateRunning, structs.LocalDraining, false}, // a running VM again withdraws it
	} {
		s.hv.setState(idA, check.state)
		hb, _, err := s.a.BuildHeartbeat(ctx)
		if err != nil || hb.LocalDrainState != check.want || hb.LocalDrained != check.drained || hb.LocalDrainID != id {
			t.Fatalf("domain %s: heartbeat local_drain_state %q local_drained %v id %q (%v); want %q %v %q",
				check.state, hb.LocalDrainState, hb.LocalDrained, hb.LocalDrainID, err, check.want, check.drained, id)
		}
		if err := hb.Validate(); err != nil {
			t.Fatalf("heartbeat invalid: %v", err)
		}
		if st := s.a.Status(ctx); st.LocalDrainState != check.want || st.LocalDrained != check.drained {
			t.Fatalf("domain %s: status local_drain_state %q local_drained %v; want %q %v",
				check.state, st.LocalDrainState, st.LocalDrained, check.want, check.drained)
		}
	}
	if err := s.a.RegisterOnce(ctx); err != nil {
		t.Fatal(err)
	}
	s.srv.setDesired()
	if err := s.a.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	want := s.a.Status(ctx).DesiredIndex
	if hb, _, err := s.a.BuildHeartbeat(ctx); err != nil || want == 0 || hb.DesiredIndex != want {
		t.Fatalf("heartbeat desired index %d (%v); want the accepted desired state's %d (> 0)", hb.DesiredIndex, err, want)
	}
}
