package endpoint_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/server/tasks"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/fsmtest"
	"github.com/chime-ha/chime/integration/wait"
)

// timerClock is the fixture's clock with the timers the endpoints wait
// on (After): advanced through it, it fires the timers it passes.
type timerClock struct {
	*fsmtest.Clock
	mu      sync.Mutex
	waiters []fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func (c *timerClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	now := c.Clock.Now()
	if d <= 0 {
		ch <- now
		return ch
	}
	c.waiters = append(c.waiters, fakeTimer{at: now.Add(d), ch: ch})
	return ch
}

// Advance moves the time on and fires the timers it passes.
func (c *timerClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Clock.Advance(d)
	now := c.Clock.Now()
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- now
	}
	c.waiters = kept
}

// Waiting is how many timers have not fired yet.
func (c *timerClock) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// seqIDs hands out ids and secrets from a counter: the same calls give
// the same ids, run after run.
type seqIDs struct {
	mu sync.Mutex
	n  int
}

func (s *seqIDs) NewID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return fmt.Sprintf("00000000-0000-4000-8000-%012x", s.n)
}

func (s *seqIDs) NewSecret() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return fmt.Sprintf("%064x", s.n)
}

type agentConfig struct{}

var timing = api.Timing{HeartbeatInterval: 15 * time.Second, MissedHeartbeats: 3}

func (agentConfig) Timing() api.Timing    { return timing }
func (agentConfig) GossipAddrs() []string { return []string{"10.0.0.1:4652", "10.0.0.2:4652"} }

// world is a real FSM driven through fsm.Direct on a manual clock
// (fsmtest), with the real placer, task runner and heartbeat monitor over
// it, and the endpoints under test: no Raft, no HTTP, no agents.
type world struct {
	*fsmtest.World
	t      *testing.T
	ctx    context.Context
	Clock  *timerClock // shadows World.Clock: the same time, with the timers the endpoints wait on
	runner *tasks.Runner
	ep     *endpoint.Endpoints
	beats  int          // heartbeats counted by the endpoints
	pauses *pauseBefore // runs a concurrent operation at a proposal boundary
}

func newWorld(t *testing.T) *world {
	t.Helper()
	fx := fsmtest.New(t)
	f, clock := fx.FSM, &timerClock{Clock: fx.Clock}
	d := &pauseBefore{Direct: fx.Direct}
	p := placement.New(placement.Config{State: f, Proposer: d})
	r := tasks.New(tasks.Config{State: f, Proposer: d, Placer: p, Clock: clock})
	m := heartbeat.New(heartbeat.Config{Interval: timing.HeartbeatInterval, Missed: timing.MissedHeartbeats,
		Proposer: d, State: f, Clock: clock})
	w := &world{World: fx, t: t, ctx: context.Background(), Clock: clock, runner: r, pauses: d}
	w.ep = endpoint.New(endpoint.Config{Proposer: d, State: f, Placer: p, Tasks: r, Monitor: m, Clock: clock,
		IDs: &seqIDs{}, Agents: agentConfig{}, CountHeartbeat: func() { w.beats++ }})
	return w
}

var (
	hv1ID = "11111111-1111-4111-8111-111111111111"
	hv2ID = "22222222-2222-4222-8222-222222222222"
)

// register registers a node of 8 vCPUs and 8 GiB at 10.0.0.<n>, as its
// agent does: with the secret it generated.
func (w *world) register(reqID, id, name string, n int) api.RegisterResponse {
	w.t.Helper()
	out, err := w.ep.Register(w.ctx, reqID, registerRequest(id, name, n))
	if err != nil {
		w.t.Fatalf("register %s: %v", name, err)
	}
	return out
}

func registerRequest(id, name string, n int) api.RegisterRequest {
	return api.RegisterRequest{ID: id, Name: name, Secret: fmt.Sprintf("%064d", n),
		APIAddr: fmt.Sprintf("10.0.0.%d:4650", n), MigrationURI: fmt.Sprintf("qemu+tcp://10.0.0.%d/system", n),
		VCPUs: 8, MemoryMiB: 8192}
}

func (w *world) vm(ref string) *structs.VM {
	w.t.Helper()
	v, err := w.FSM.ResolveVM(ref)
	if err != nil {
		w.t.Fatal(err)
	}
	return v
}

// heartbeat sends node id's heartbeat reporting vms.
func (w *world) heartbeat(id string, vms ...structs.VMObservation) api.HeartbeatResponse {
	w.t.Helper()
	out, err := w.ep.Heartbeat(w.ctx, w.Node(id), api.HeartbeatRequest{NodeID: id, VMs: vms})
	if err != nil {
		w.t.Fatalf("heartbeat of %s: %v", id, err)
	}
	return out
}

func (w *world) dump() map[string]map[string]string {
	w.t.Helper()
	d, err := w.FSM.Dump()
	if err != nil {
		w.t.Fatal(err)
	}
	return d
}

// lifecycle is the whole story the endpoints tell without HTTP: two nodes
// register, a VM is created, placed and reported running, migrated (task,
// MigrationStart after one runner step, the source's order, the report
// moving the placement), its node drained and rebuilt; every retry
// answers like the first attempt.
func lifecycle(t *testing.T, w *world) {
	ctx := w.ctx
	r1 := w.register("register-hv1", hv1ID, "hv1", 1)
	if r1.NodeID != hv1ID || r1.Secret != registerRequest(hv1ID, "hv1", 1).Secret || r1.Timing != timing || len(r1.GossipAddrs) != 2 {
		t.Fatalf("register hv1 answered %+v", r1)
	}
	if again := w.register("register-hv1", hv1ID, "hv1", 1); !reflect.DeepEqual(again, r1) {
		t.Fatalf("retried register answered %+v, first %+v", again, r1)
	}
	// An agent that sends no secret is given one from the id source.
	req2 := registerRequest(hv2ID, "hv2", 2)
	req2.Secret = ""
	r2, err := w.ep.Register(ctx, "register-hv2", req2)
	if err != nil || len(r2.Secret) != 64 {
		t.Fatalf("register hv2 without a secret: %+v, %v", r2, err)
	}
	for _, r := range []api.RegisterResponse{r1, r2} {
		if n, err := w.ep.Authenticate(r.NodeID, r.Secret); err != nil || n.ID != r.NodeID {
			t.Fatalf("authenticate %s with its secret: %v, %v", r.NodeID, n, err)
		}
	}

	// Create: placed at once, since both nodes have room. A retry answers
	// with the same VM although its name is taken now.
	web, err := w.ep.CreateVM(ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512})
	if err != nil {
		t.Fatal(err)
	}
	if web.NodeID == "" || web.DesiredState != structs.DesiredRunning {
		t.Fatalf("created vm: node %q desired %s, want placed and desired running", web.NodeID, web.DesiredState)
	}
	if again, err := w.ep.CreateVM(ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512}); err != nil || !reflect.DeepEqual(again, web) {
		t.Fatalf("retried create answered %+v, %v; first %+v", again, err, web)
	}
	if vms, _ := w.FSM.VMs(); len(vms) != 1 {
		t.Fatalf("%d VMs after a retried create, want 1", len(vms))
	}
	src, dst := web.NodeID, hv2ID
	if src == hv2ID {
		dst = hv1ID
	}

	// The source's agent reports it running.
	if hb := w.heartbeat(src, fsmtest.Observation(web, structs.StateRunning)); hb.Timing != timing || len(hb.RejectedAdoptions) != 0 {
		t.Fatalf("heartbeat answered %+v", hb)
	}
	if got := w.vm("web"); got.State != structs.StateRunning {
		t.Fatalf("vm is %s after the heartbeat, want running", got.State)
	}

	// Migrate: a task first, the migration only when the runner steps.
	mig, err := w.ep.MigrateVM(ctx, "migrate-web", "web", "")
	if err != nil {
		t.Fatal(err)
	}
	if mig.Kind != structs.TaskMigrate || mig.State != structs.TaskPending || len(mig.Steps) != 1 || mig.Steps[0].From != src {
		t.Fatalf("migrate task %+v", mig)
	}
	if got := w.vm("web"); got.Migration != nil {
		t.Fatalf("migration started before the runner stepped: %+v", got.Migration)
	}
	if again, err := w.ep.MigrateVM(ctx, "migrate-web", "web", ""); err != nil || !reflect.DeepEqual(again, mig) {
		t.Fatalf("retried migrate answered %+v, %v; first %+v", again, err, mig)
	}
	if err := w.runner.Step(ctx); err != nil {
		t.Fatal(err)
	}
	moving := w.vm("web")
	if m := moving.Migration; m == nil || m.From != src || m.To != dst || m.TaskID != mig.ID {
		t.Fatalf("after one step: migration %+v, want %s → %s for task %s", moving.Migration, src, dst, mig.ID)
	}
	srcWant, err := w.ep.Desired(w.Node(src))
	if err != nil {
		t.Fatal(err)
	}
	dstNode := w.Node(dst)
	dstHost, _, _ := net.SplitHostPort(dstNode.APIAddr) // no migration address: the API's host
	order := &api.MigrationOrder{TaskID: mig.ID, ToNodeID: dst, DestURI: dstNode.MigrationURI, MigrateURI: "tcp://" + dstHost}
	if len(srcWant.VMs) != 1 || !reflect.DeepEqual(srcWant.VMs[0].Migrate, order) {
		t.Fatalf("source's desired state %+v, want the order %+v", srcWant, order)
	}
	dstWant, err := w.ep.Desired(dstNode)
	if err != nil {
		t.Fatal(err)
	}
	if len(dstWant.VMs) != 0 || len(dstWant.Incoming) != 1 || dstWant.Incoming[0].ID != web.ID {
		t.Fatalf("destination's desired state %+v, want web incoming", dstWant)
	}
	// Only the source may report the result.
	report := api.MigrationReport{TaskID: mig.ID, VMID: web.ID, Generation: moving.Generation, OK: true}
	if err := w.ep.Migrated(ctx, "migrated-wrong", dstNode, report); !errors.Is(err, structs.ErrForbidden) {
		t.Fatalf("report from the destination: %v, want forbidden", err)
	}
	if err := w.ep.Migrated(ctx, "migrated-web", w.Node(src), report); err != nil {
		t.Fatal(err)
	}
	if got := w.vm("web"); got.NodeID != dst || got.Migration != nil {
		t.Fatalf("after the report: vm on %s, migration %+v; want on %s", got.NodeID, got.Migration, dst)
	}
	if err := w.runner.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w.Task(mig.ID); got.State != structs.TaskSucceeded {
		t.Fatalf("migrate task %s after the report, want succeeded (%s)", got.State, got.Error)
	}

	// Drain the node the VM is on now, then rebuild it: refused while
	// nobody knows the VM stopped, allowed once the operator confirms the
	// node fenced.
	drain, err := w.ep.NodeAction(ctx, "drain-dst", dst, endpoint.NodeDrain, false)
	if err != nil {
		t.Fatal(err)
	}
	if drain.Task == nil || drain.Task.Kind != structs.TaskDrain || w.Node(dst).ManagementState != structs.NodeDrained {
		t.Fatalf("drain answered %+v, node %s", drain, w.Node(dst).ManagementState)
	}
	if again, err := w.ep.NodeAction(ctx, "drain-dst", dst, endpoint.NodeDrain, false); err != nil || again.Task == nil || again.Task.ID != drain.Task.ID {
		t.Fatalf("retried drain answered %+v, %v; first task %s", again, err, drain.Task.ID)
	}
	if d, _ := w.ep.Desired(w.Node(dst)); len(d.VMs) != 1 || d.VMs[0].DesiredState != structs.DesiredStopped {
		t.Fatalf("drained node's desired state %+v, want web stopped", d)
	}
	_, err = w.ep.NodeAction(ctx, "rebuild-early", dst, endpoint.NodeRebuild, false)
	if !errors.Is(err, structs.ErrConflict) || structs.AsError(err).Field != "confirm_fenced" {
		t.Fatalf("rebuild without acknowledgement: %v, want a conflict naming confirm_fenced", err)
	}
	if got := w.vm("web"); got.NodeID != dst {
		t.Fatalf("refused rebuild moved the vm to %s", got.NodeID)
	}
	rebuild, err := w.ep.NodeAction(ctx, "rebuild-dst", dst, endpoint.NodeRebuild, true)
	if err != nil {
		t.Fatal(err)
	}
	if rt := rebuild.Task; rt == nil || rt.Kind != structs.TaskRebuild || rt.State != structs.TaskSucceeded ||
		len(rt.Steps) != 1 || rt.Steps[0].To != src {
		t.Fatalf("rebuild task %+v, want succeeded with web to %s", rebuild.Task, src)
	}
	if got := w.vm("web"); got.NodeID != src || !w.Node(dst).Fenced {
		t.Fatalf("after the rebuild: vm on %s (want %s), node fenced %v", got.NodeID, src, w.Node(dst).Fenced)
	}
	if again, err := w.ep.NodeAction(ctx, "rebuild-dst", dst, endpoint.NodeRebuild, true); err != nil || !reflect.DeepEqual(again, rebuild) {
		t.Fatalf("retried rebuild answered %+v, %v; first %+v", again, err, rebuild)
	}
	if w.beats != 1 {
		t.Fatalf("%d heartbeats counted, want 1", w.beats)
	}
}

func TestLifecycleWithoutHTTP(t *testing.T) {
	lifecycle(t, newWorld(t))
}

// TestTwoRunsAreIdentical: the same calls on the same clock and id source
// leave identical states, entry for entry: nothing the endpoints decide
// depends on map order, the wall clock or randomness.
func TestTwoRunsAreIdentical(t *testing.T) {
	a, b := newWorld(t), newWorld(t)
	lifecycle(t, a)
	lifecycle(t, b)
	da, db := a.dump(), b.dump()
	if len(da) == 0 {
		t.Fatal("empty dump")
	}
	if !reflect.DeepEqual(da, db) {
		for bucket, entries := range da {
			for k, v := range entries {
				if db[bucket][k] != v {
					t.Errorf("%s/%s: first run %q, second %q", bucket, k, v, db[bucket][k])
				}
			}
			for k := range db[bucket] {
				if _, ok := entries[k]; !ok {
					t.Errorf("%s/%s only in the second run", bucket, k)
				}
			}
		}
		t.Fatal("two identical runs left different states")
	}
}

// TestBadInputIsRefusedNamingTheField: input is judged in the endpoints,
// before anything is proposed, with the kind and the field at fault; the
// state does not change.
func TestBadInputIsRefusedNamingTheField(t *testing.T) {
	w := newWorld(t)
	ctx := w.ctx
	w.register("r1", hv1ID, "hv1", 1)
	w.register("r2", hv2ID, "hv2", 2)
	if _, err := w.ep.CreateVM(ctx, "c1", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
	web := w.vm("web")
	hv1 := w.Node(hv1ID)
	otherID := "33333333-3333-4333-8333-333333333333"
	tests := []struct {
		name  string
		call  func() error
		kind  error
		field string
	}{
		{"create: bad name", func() error {
			_, err := w.ep.CreateVM(ctx, "x1", api.CreateVMRequest{Name: "Web_1", VCPUs: 1, Memory: 64})
			return err
		}, structs.ErrInvalid, "name"},
		{"create: zero vcpus", func() error {
			_, err := w.ep.CreateVM(ctx, "x2", api.CreateVMRequest{Name: "a", VCPUs: 0, Memory: 64})
			return err
		}, structs.ErrInvalid, "vcpus"},
		{"create: relative disk", func() error {
			_, err := w.ep.CreateVM(ctx, "x3", api.CreateVMRequest{Name: "a", VCPUs: 1, Memory: 64, Disks: []string{"d.img"}})
			return err
		}, structs.ErrInvalid, "disks"},
		{"create: name taken", func() error {
			_, err := w.ep.CreateVM(ctx, "x4", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64})
			return err
		}, structs.ErrConflict, "name"},
		{"register: bad id", func() error {
			_, err := w.ep.Register(ctx, "x5", registerRequest("x", "hv3", 3))
			return err
		}, structs.ErrInvalid, "id"},
		{"register: short secret", func() error {
			req := registerRequest(otherID, "hv3", 3)
			req.Secret = "short"
			_, err := w.ep.Register(ctx, "x6", req)
			return err
		}, structs.ErrInvalid, "secret"},
		// A known node without its secret is refused too, but the refusal
		// is recorded (an event): TestLostSecretNeedsAReset.
		{"authenticate: unknown node", func() error {
			_, err := w.ep.Authenticate(otherID, "secret")
			return err
		}, structs.ErrNotFound, "node_id"},
		{"authenticate: wrong secret", func() error {
			_, err := w.ep.Authenticate(hv1ID, "wrong")
			return err
		}, structs.ErrForbidden, ""},
		{"heartbeat: bad observed state", func() error {
			_, err := w.ep.Heartbeat(ctx, hv1, api.HeartbeatRequest{NodeID: hv1ID, VMs: []structs.VMObservation{{VMID: web.ID, State: "flying"}}})
			return err
		}, structs.ErrInvalid, "vms"},
		{"heartbeat: about another node", func() error {
			_, err := w.ep.Heartbeat(ctx, hv1, api.HeartbeatRequest{NodeID: hv2ID})
			return err
		}, structs.ErrForbidden, ""},
		{"migrated: bad vm id", func() error {
			return w.ep.Migrated(ctx, "x8", hv1, api.MigrationReport{VMID: "x", OK: true})
		}, structs.ErrInvalid, "vm_id"},
		{"migrate: unknown destination", func() error {
			_, err := w.ep.MigrateVM(ctx, "x9", "web", "nowhere")
			return err
		}, structs.ErrNotFound, "to"},
		{"migrate: to its own node", func() error {
			_, err := w.ep.MigrateVM(ctx, "x10", "web", web.NodeID)
			return err
		}, structs.ErrInvalid, "to"},
		{"vm: unknown", func() error {
			_, err := w.ep.VMAction(ctx, "x11", "nope", endpoint.VMStop)
			return err
		}, structs.ErrNotFound, "vm"},
		{"vm: unknown action", func() error {
			_, err := w.ep.VMAction(ctx, "x12", "web", "explode")
			return err
		}, structs.ErrNotFound, "action"},
		{"node: unknown", func() error {
			_, err := w.ep.NodeAction(ctx, "x13", "nope", endpoint.NodeDrain, false)
			return err
		}, structs.ErrNotFound, "node"},
		{"node: unknown action", func() error {
			_, err := w.ep.NodeAction(ctx, "x14", "hv1", "explode", false)
			return err
		}, structs.ErrNotFound, "action"},
		{"node: rebuild of an enabled node", func() error {
			_, err := w.ep.NodeAction(ctx, "x15", "hv1", endpoint.NodeRebuild, true)
			return err
		}, structs.ErrConflict, "id"},
	}
	before := w.dump()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, tt.kind) || structs.AsError(err).Field != tt.field {
				t.Fatalf("err = %v (field %q), want %v naming %q", err, structs.AsError(err).Field, tt.kind, tt.field)
			}
		})
	}
	if after := w.dump(); !reflect.DeepEqual(before, after) {
		t.Fatal("refused calls changed the state")
	}
	if w.beats != 0 {
		t.Fatalf("%d refused heartbeats were counted", w.beats)
	}
}

// TestRestartWaitsOnTheClock: a restart stops the VM, waits for its agent
// to report it stopped and starts it again; when no report comes within
// RestartTimeout on the injected clock, it sets the VM running again and
// answers ErrTimeout.
func TestRestartWaitsOnTheClock(t *testing.T) {
	w := newWorld(t)
	w.register("r1", hv1ID, "hv1", 1)
	if _, err := w.ep.CreateVM(w.ctx, "c1", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
	w.heartbeat(hv1ID, fsmtest.Observation(w.vm("web"), structs.StateRunning))

	type answer struct {
		vm  *structs.VM
		err error
	}
	restart := func(reqID string) <-chan answer {
		timers := w.Clock.Waiting() // an earlier restart's timer stays until it fires, as time.After's does
		done := make(chan answer, 1)
		go func() {
			vm, err := w.ep.VMAction(w.ctx, reqID, "web", endpoint.VMRestart)
			done <- answer{vm, err}
		}()
		// The restart has proposed the stop and is waiting on the clock.
		wait.For(t, 10*time.Second, "restart waits for the stop", func() (bool, string) {
			v := w.vm("web")
			return v.DesiredState == structs.DesiredStopped && w.Clock.Waiting() == timers+1,
				fmt.Sprintf("desired %s, %d timers", v.DesiredState, w.Clock.Waiting())
		})
		return done
	}

	// The agent reports it stopped: the restart starts it again.
	done := restart("restart-1")
	w.heartbeat(hv1ID, fsmtest.Observation(w.vm("web"), structs.StateStopped))
	got := <-done
	if got.err != nil || got.vm.DesiredState != structs.DesiredRunning {
		t.Fatalf("restart after the stop report: %+v, %v; want desired running", got.vm, got.err)
	}

	// No report: RestartTimeout later on the fake clock, the restart gives up.
	w.heartbeat(hv1ID, fsmtest.Observation(w.vm("web"), structs.StateRunning))
	done = restart("restart-2")
	select {
	case got := <-done:
		t.Fatalf("restart answered before its timeout: %+v, %v", got.vm, got.err)
	default:
	}
	w.Clock.Advance(endpoint.RestartTimeout)
	got = <-done
	if !errors.Is(got.err, endpoint.ErrTimeout) || structs.AsError(got.err).Field != "id" {
		t.Fatalf("restart without a stop report: %v, want ErrTimeout naming id", got.err)
	}
	if v := w.vm("web"); v.DesiredState != structs.DesiredRunning {
		t.Fatalf("after the timeout the vm is desired %s, want running again", v.DesiredState)
	}
}

// TestRebuildTrustsOnlyValidDrainEvidence: a rebuild without
// --confirm-fenced is refused until a heartbeat sent after the agent
// applied the drain (its desired index at least the drain's) lists every VM
// stopped, and refused again once a later heartbeat lists one running
// (uniqueness rule 6, issue 11 root causes 1 and 8). A local drain claimed
// while a VM runs is no evidence either.
func TestRebuildTrustsOnlyValidDrainEvidence(t *testing.T) {
	w := newWorld(t)
	ctx := w.ctx
	w.register("reg-1", hv1ID, "hv1", 1)
	if _, err := w.ep.CreateVM(ctx, "create-web", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 512}); err != nil {
		t.Fatal(err)
	}
	w.register("reg-2", hv2ID, "hv2", 2)
	web := w.vm("web")
	if web.NodeID != hv1ID {
		t.Fatalf("web placed on %s, want hv1 (the only node then)", web.NodeID)
	}
	beat := func(desired uint64, state string, localDrain string) {
		t.Helper()
		hb := api.HeartbeatRequest{NodeID: hv1ID, VMs: []structs.VMObservation{fsmtest.Observation(web, state)}, DesiredIndex: desired,
			LocalDrainState: localDrain, LocalDrained: localDrain == structs.LocalDrainDone, LocalDrainID: map[bool]string{true: "d-1"}[localDrain != ""]}
		if _, err := w.ep.Heartbeat(ctx, w.Node(hv1ID), hb); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
	}
	before, err := w.ep.Desired(w.Node(hv1ID))
	if err != nil {
		t.Fatal(err)
	}
	beat(before.Index, structs.StateRunning, "")
	// An old agent's claim: locally drained while web runs.
	beat(before.Index, structs.StateRunning, structs.LocalDrainDone)
	if _, err := w.ep.NodeAction(ctx, "drain", hv1ID, endpoint.NodeDrain, false); err != nil {
		t.Fatal(err)
	}
	after, err := w.ep.Desired(w.Node(hv1ID))
	if err != nil {
		t.Fatal(err)
	}
	if after.Index < w.Node(hv1ID).DrainIndex || w.Node(hv1ID).DrainIndex == 0 {
		t.Fatalf("desired index %d after the drain, node drain_index %d: the drained desired state must be at least the drain's index",
			after.Index, w.Node(hv1ID).DrainIndex)
	}
	steps := []struct {
		name     string
		desired  uint64
		state    string
		wantAck  bool
		rebuilds bool // the rebuild is accepted (only the last step)
	}{
		{"claimed local drain while running", before.Index, structs.StateRunning, false, false},
		{"stopped, but the agent had not applied the drain", before.Index, structs.StateStopped, false, false},
		{"stopped after applying the drain", after.Index, structs.StateStopped, true, false},
		{"running again: the evidence is withdrawn", after.Index, structs.StateRunning, false, false},
		{"stopped again after applying the drain", after.Index, structs.StateStopped, true, true},
	}
	for i, st := range steps {
		beat(st.desired, st.state, "")
		n := w.Node(hv1ID)
		if n.DrainAcked != st.wantAck || n.LocalDrained {
			t.Fatalf("%s: node drain_acked %v local_drained %v, want drain_acked %v and no local drain", st.name, n.DrainAcked, n.LocalDrained, st.wantAck)
		}
		if st.wantAck && !st.rebuilds {
			continue
		}
		_, err := w.ep.NodeAction(ctx, fmt.Sprintf("rebuild-%d", i), hv1ID, endpoint.NodeRebuild, false)
		if st.rebuilds {
			if err != nil {
				t.Fatalf("%s: rebuild refused: %v", st.name, err)
			}
			if got := w.vm("web"); got.NodeID != hv2ID {
				t.Fatalf("%s: rebuild placed web on %s, want hv2", st.name, got.NodeID)
			}
			continue
		}
		if !errors.Is(err, structs.ErrConflict) || structs.AsError(err).Field != "confirm_fenced" {
			t.Fatalf("%s: rebuild answered %v, want a conflict naming confirm_fenced", st.name, err)
		}
		if got := w.vm("web"); got.NodeID != hv1ID {
			t.Fatalf("%s: refused rebuild moved web to %s", st.name, got.NodeID)
		}
	}
}
