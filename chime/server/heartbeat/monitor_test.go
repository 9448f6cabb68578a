package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

func TestSilentFor(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name              string
		now, last, leader time.Time
		want              time.Duration
	}{
		{"heartbeat after election", base.Add(10 * time.Second), base.Add(8 * time.Second), base, 2 * time.Second},
		{"never heard since election: grace from election", base.Add(10 * time.Second), time.Time{}, base.Add(7 * time.Second), 3 * time.Second},
		{"old heartbeat from before the election does not count against the node", base.Add(10 * time.Second), base, base.Add(9 * time.Second), time.Second},
	}
	for _, tt := range tests {
		if got := silentFor(tt.now, tt.last, tt.leader); got != tt.want {
			t.Errorf("%s: silentFor = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestStateFromHeartbeat(t *testing.T) {
	if stateFromHeartbeat(nil) != structs.MonitorNormal || stateFromHeartbeat([]string{"x"}) != structs.MonitorError {
		t.Fatal("faults must mean error, none normal")
	}
}

// fakePinger answers pings per node: nil (alive) unless an error is set;
// a node with a gate blocks until the gate is closed.
type fakePinger struct {
	mu    sync.Mutex
	errs  map[string]error
	gates map[string]chan struct{}
	calls map[string]int
	// during, when set, runs inside every Ping.
	during func()
}

func (p *fakePinger) Ping(ctx context.Context, n structs.Node) error {
	p.mu.Lock()
	p.calls[n.ID]++
	err, gate, during := p.errs[n.ID], p.gates[n.ID], p.during
	p.mu.Unlock()
	if during != nil {
		during() // e.g. the clock runs while the ping-back times out
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (p *fakePinger) count(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[id]
}

// fakeGossip says which members are alive.
type fakeGossip struct {
	mu    sync.Mutex
	alive map[string]bool
}

func (g *fakeGossip) Reachable(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.alive[id]
}

// countingProposer counts proposals by type on their way to fsm.Direct.
type countingProposer struct {
	next Proposer
	mu   sync.Mutex
	n    map[fsm.CommandType]int
}

func (c *countingProposer) Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	c.mu.Lock()
	c.n[typ]++
	c.mu.Unlock()
	return c.next.Propose(ctx, reqID, typ, payload)
}

// take returns the counts since the last call and resets them.
func (c *countingProposer) take() map[fsm.CommandType]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.n
	c.n = map[fsm.CommandType]int{}
	return out
}

const (
	testInterval = time.Second
	testMissed   = 3
)

// world is a monitor over a real FSM applied directly (fsmtest: no Raft,
// no HTTP), with a manual clock and fake pinger and gossip.
type world struct {
	t      *testing.T
	fx     *fsmtest.World
	f      *fsm.FSM // fx.FSM
	props  *countingProposer
	clock  *fsmtest.Clock // fx.Clock
	pinger *fakePinger
	gossip *fakeGossip
	m      *Monitor
}

func newWorld(t *testing.T) *world {
	t.Helper()
	fx := fsmtest.New(t)
	w := &world{t: t, fx: fx, f: fx.FSM, clock: fx.Clock,
		pinger: &fakePinger{errs: map[string]error{}, gates: map[string]chan struct{}{}, calls: map[string]int{}},
		gossip: &fakeGossip{alive: map[string]bool{}}}
	w.props = &countingProposer{next: fx.Direct, n: map[fsm.CommandType]int{}}
	w.m = New(Config{Interval: testInterval, Missed: testMissed, Proposer: w.props, State: w.f, Clock: w.clock,
		Pinger: w.pinger, Gossip: w.gossip})
	w.m.Reset() // this "server" just became leader
	return w
}

// must applies a command of the test's own (not counted).
func (w *world) must(typ fsm.CommandType, payload any) *fsm.Result {
	w.t.Helper()
	return w.fx.Propose(typ, payload)
}

func (w *world) register(name string) structs.Node {
	w.t.Helper()
	n := structs.Node{ID: uuid.NewString(), Name: name, APIAddr: "127.0.0.1:1", VCPUs: 8, MemoryMiB: 8192}
	w.must(fsm.CmdRegisterNode, fsm.RegisterNode{Node: n, SecretHash: "h"})
	w.m.Registered(n.ID)
	return n
}

func (w *world) node(id string) *structs.Node {
	w.t.Helper()
	return w.fx.Node(id)
}

// beat sends a heartbeat of node id as the endpoint would.
func (w *world) beat(id string, r Report) Outcome {
	w.t.Helper()
	out, err := w.m.Heartbeat(context.Background(), w.node(id), r)
	if err != nil {
		w.t.Fatalf("heartbeat: %v", err)
	}
	return out
}

func TestSilenceAndPingBack(t *testing.T) {
	limit := testMissed * testInterval
	tests := []struct {
		name       string
		setup      func(w *world, n structs.Node)
		wantState  string
		wantPinged bool
	}{
		{"silent, the node answers nothing: unreachable", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			w.clock.Advance(limit + time.Millisecond)
		}, structs.MonitorUnreachable, true},
		{"silent, but the agent answers the direct ping", func(w *world, n structs.Node) {
			w.clock.Advance(limit + time.Millisecond)
		}, structs.MonitorNormal, true},
		{"silent, but gossip sees it alive", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			w.gossip.alive[n.ID] = true
			w.clock.Advance(limit + time.Millisecond)
		}, structs.MonitorNormal, true},
		{"heartbeats keep coming: no ping-back", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			for i := 0; i < 5; i++ {
				w.clock.Advance(testInterval)
				w.beat(n.ID, Report{})
			}
		}, structs.MonitorNormal, false},
		{"new leader: a full grace period from the election", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			w.clock.Advance(10 * limit) // silent for long under the old leader
			w.m.Reset()
			w.clock.Advance(limit) // in the last ping timeout before the limit: pinged, not marked
		}, structs.MonitorNormal, true},
		{"silent for less than the limit less one ping timeout: no ping-back", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			w.clock.Advance(limit - testInterval)
		}, structs.MonitorNormal, false},
		{"in the last ping timeout before the limit, the ping-back fails at once: not yet", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			w.clock.Advance(limit - testInterval/2)
		}, structs.MonitorNormal, true},
		{"a ping-back started before the limit times out after it: unreachable", func(w *world, n structs.Node) {
			w.pinger.errs[n.ID] = errors.New("connection refused")
			w.pinger.during = func() { w.clock.Advance(testInterval/2 + 2*time.Millisecond) }
			w.clock.Advance(limit - testInterval/2 - time.Millisecond)
		}, structs.MonitorUnreachable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			n := w.register("hv1")
			tt.setup(w, n)
			w.props.take()
			w.m.CheckOnce(context.Background())
			got := w.node(n.ID)
			if got.MonitorState != tt.wantState {
				t.Fatalf("monitor state %s, want %s", got.MonitorState, tt.wantState)
			}
			if pinged := w.pinger.count(n.ID) > 0; pinged != tt.wantPinged {
				t.Fatalf("pinged back: %v, want %v", pinged, tt.wantPinged)
			}
			props := w.props.take()
			if tt.wantState == structs.MonitorUnreachable {
				if !reflect.DeepEqual(props, map[fsm.CommandType]int{fsm.CmdSetMonitor: 1}) {
					t.Fatalf("proposals %v, want one %s", props, fsm.CmdSetMonitor)
				}
				ev, _ := w.f.Events(0, 100)
				last := ev[len(ev)-1]
				if last.Kind != "node.unreachable" || !strings.Contains(last.Message, "no heartbeat for 3.001s; ping-back failed (direct: connection refused; gossip: not alive)") {
					t.Fatalf("last event %s: %s", last.Kind, last.Message)
				}
			} else if len(props) != 0 {
				t.Fatalf("proposals %v, want none", props)
			}
			// An answered ping-back counts as a sign of life: no second
			// ping-back in the next round. One that failed before the
			// limit is made again at the next check.
			if tt.wantPinged && tt.wantState == structs.MonitorNormal {
				answered := w.pinger.errs[n.ID] == nil || w.gossip.alive[n.ID]
				want := map[bool]int{true: 1, false: 2}[answered]
				w.m.CheckOnce(context.Background())
				if c := w.pinger.count(n.ID); c != want {
					t.Fatalf("%d ping-backs after the next check (answered: %v), want %d", c, answered, want)
				}
			}
		})
	}
}

// TestHeartbeatTransitions drives one node through the monitor's states:
// unreachable by silence, back to normal by a heartbeat, error by a
// heartbeat with faults, normal again. Each transition is one proposal; a
// heartbeat that changes nothing is none.
func TestHeartbeatTransitions(t *testing.T) {
	w := newWorld(t)
	n := w.register("hv1")
	w.pinger.errs[n.ID] = errors.New("connection refused")
	w.clock.Advance(testMissed*testInterval + time.Millisecond)
	w.m.CheckOnce(context.Background())
	if got := w.node(n.ID); got.MonitorState != structs.MonitorUnreachable {
		t.Fatalf("after silence: %s, want unreachable", got.MonitorState)
	}
	w.props.take()
	steps := []struct {
		name       string
		faults     []string
		wantState  string
		wantFaults []string
		wantProps  int
	}{
		{"heartbeat after unreachable", nil, structs.MonitorNormal, nil, 1},
		{"heartbeat with faults", []string{"storage", "libvirt"}, structs.MonitorError, []string{"libvirt", "storage"}, 1},
		{"same faults again", []string{"libvirt", "storage"}, structs.MonitorError, []string{"libvirt", "storage"}, 0},
		{"faults cleared", nil, structs.MonitorNormal, nil, 1},
		{"nothing new", nil, structs.MonitorNormal, nil, 0},
	}
	for _, st := range steps {
		w.clock.Advance(testInterval)
		w.beat(n.ID, Report{Faults: st.faults, DesiredIndex: w.f.NodeIndex(n.ID)})
		got := w.node(n.ID)
		if got.MonitorState != st.wantState || !reflect.DeepEqual(got.Faults, st.wantFaults) {
			t.Fatalf("%s: state %s faults %v, want %s %v", st.name, got.MonitorState, got.Faults, st.wantState, st.wantFaults)
		}
		props := w.props.take()
		if props[fsm.CmdHeartbeat] != st.wantProps || len(props) > 1 {
			t.Fatalf("%s: proposals %v, want %d %s", st.name, props, st.wantProps, fsm.CmdHeartbeat)
		}
	}
}

// TestOneHeartbeatIsOneEntry: observations, an adoption, a refused
// adoption, drain flags, a node-local migration report and a monitor
// transition of one heartbeat are one proposal, applied together.
func TestOneHeartbeatIsOneEntry(t *testing.T) {
	w := newWorld(t)
	a, b := w.register("a"), w.register("b")
	web := structs.VM{ID: uuid.NewString(), Name: "web", DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
	genWeb := w.must(fsm.CmdCreateVM, fsm.CreateVM{VM: web, NodeID: b.ID}).Index
	db := structs.VM{ID: uuid.NewString(), Name: "db", DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
	genDB := w.must(fsm.CmdCreateVM, fsm.CreateVM{VM: db, NodeID: a.ID}).Index
	gone := uuid.NewString()
	// The source's migration log records db's migration to b (per-node
	// authorization: only a recorded migration lets b adopt it).
	w.beat(a.ID, Report{Migrations: []structs.LocalMigration{{VMID: db.ID, ToNode: b.ID, FromNode: a.ID, Generation: genDB, Outcome: structs.LocalMigrationUnknown}}})
	w.props.take()

	out := w.beat(b.ID, Report{
		Faults: []string{"kernel"},
		VMs: []structs.VMObservation{{VMID: web.ID, State: structs.StateRunning, Reason: "booted", Generation: genWeb},
			{VMID: db.ID, State: structs.StateRunning, Reason: "migrated", Generation: genDB}},
		Adopted:      []structs.VMObservation{{VMID: db.ID, State: structs.StateRunning, Generation: genDB}, {VMID: gone, State: structs.StateRunning, Generation: 2}},
		LocalDrained: true, LocalDrainID: "d-1",
		Migrations: []structs.LocalMigration{{VMID: web.ID, ToAddr: "10.0.0.7:4660", Generation: genWeb}},
	})
	if props := w.props.take(); !reflect.DeepEqual(props, map[fsm.CommandType]int{fsm.CmdHeartbeat: 1}) {
		t.Fatalf("proposals %v, want exactly one %s", props, fsm.CmdHeartbeat)
	}
	if !out.Proposed || !reflect.DeepEqual(out.Adopted, []string{db.ID}) || !reflect.DeepEqual(out.Rejected, []string{gone}) {
		t.Fatalf("outcome %+v, want adopted [%s] rejected [%s]", out, db.ID, gone)
	}
	got := w.node(b.ID)
	// A local drain claimed while VMs run is recorded as draining, never
	// as evidence (uniqueness rule 6).
	if got.MonitorState != structs.MonitorError || got.LocalDrained || got.LocalDrainState != structs.LocalDraining || got.LocalDrainID != "d-1" {
		t.Fatalf("node after the heartbeat: %+v", got)
	}
	for _, id := range []string{web.ID, db.ID} {
		vm, _ := w.f.VM(id)
		if vm.NodeID != b.ID || vm.State != structs.StateRunning {
			t.Fatalf("vm %s: node %s state %s, want running on b", vm.Name, vm.NodeID, vm.State)
		}
	}
	if task, err := w.f.Task(fsm.AdoptTaskID(gone, 2, b.ID)); err != nil || task.State != structs.TaskFailed {
		t.Fatalf("refused adoption of a gone VM: task %+v, %v", task, err)
	}
	ev, _ := w.f.Events(0, 1000)
	found := false
	for _, e := range ev {
		if e.Kind == "vm.local_migration" && e.VMID == web.ID && strings.Contains(e.Message, "10.0.0.7:4660") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no vm.local_migration event for the report")
	}

	// The same heartbeat state again (the migration report acknowledged,
	// the refused copy destroyed): nothing to write.
	vmDB, _ := w.f.VM(db.ID)
	w.beat(b.ID, Report{Faults: []string{"kernel"}, LocalDrained: true, LocalDrainID: "d-1",
		VMs: []structs.VMObservation{{VMID: web.ID, State: structs.StateRunning, Reason: "booted", Generation: genWeb},
			{VMID: db.ID, State: structs.StateRunning, Reason: "migrated", Generation: vmDB.AdoptGeneration}},
		Adopted: []structs.VMObservation{{VMID: db.ID, State: structs.StateRunning, Generation: genDB}}})
	if props := w.props.take(); len(props) != 0 {
		t.Fatalf("an unchanged heartbeat proposed %v, want nothing", props)
	}
}

// TestSlowPingBackDoesNotDelayOthers: the loop pings back asynchronously;
// a node whose ping hangs does not hold up another's verdict.
func TestSlowPingBackDoesNotDelayOthers(t *testing.T) {
	w := newWorld(t)
	slow, fast := w.register("slow"), w.register("fast")
	gate := make(chan struct{})
	w.pinger.gates[slow.ID] = gate
	w.pinger.errs[slow.ID] = errors.New("timeout")
	w.pinger.errs[fast.ID] = errors.New("connection refused")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// Run resets the grace period when it starts: wait until it has, then
	// make both nodes silent beyond the limit.
	waitUntil(t, func() string {
		w.m.mu.Lock()
		defer w.m.mu.Unlock()
		if len(w.m.last) != 0 {
			return "Run has not reset the monitor yet"
		}
		return ""
	})
	w.clock.Advance(testMissed*testInterval + time.Millisecond)
	waitUntil(t, func() string {
		if s := w.node(fast.ID).MonitorState; s != structs.MonitorUnreachable {
			return fmt.Sprintf("fast node is %s while the slow node's ping-back hangs (slow pinged %d times)", s, w.pinger.count(slow.ID))
		}
		return ""
	})
	if s := w.node(slow.ID).MonitorState; s != structs.MonitorNormal {
		t.Fatalf("slow node is %s before its ping-back answered", s)
	}
	close(gate)
	waitUntil(t, func() string {
		if s := w.node(slow.ID).MonitorState; s != structs.MonitorUnreachable {
			return "slow node is " + s + " after its ping-back failed"
		}
		return ""
	})
}

// waitUntil polls fn until it returns "" or 10 s pass; it fails with fn's
// last answer.
func waitUntil(t *testing.T, fn func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		if last = fn(); last == "" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("condition not met within 10s: %s", last)
}

// orderPinger records the order of pings and how many were in flight at
// once; every ping fails.
type orderPinger struct {
	mu       sync.Mutex
	order    []string
	inFlight int
	maxIn    int
}

func (p *orderPinger) Ping(ctx context.Context, n structs.Node) error {
	p.mu.Lock()
	p.order = append(p.order, n.ID)
	p.inFlight++
	p.maxIn = max(p.maxIn, p.inFlight)
	p.mu.Unlock()
	// Give another ping-back, were one running concurrently, the chance
	// to enter meanwhile.
	time.Sleep(time.Millisecond)
	p.mu.Lock()
	p.inFlight--
	p.mu.Unlock()
	return errors.New("connection refused")
}

// TestCheckOncePingsBackOneAtATimeInNodeIDOrder: the step function runs
// its ping-backs one after another, ordered by node id (not by name, the
// order the state lists nodes in), so that a caller stepping the monitor
// (the simulator) sees the same sequence of pings and proposals every
// time.
func TestCheckOncePingsBackOneAtATimeInNodeIDOrder(t *testing.T) {
	w := newWorld(t)
	p := &orderPinger{}
	w.m.pinger = p
	// Names sort in the opposite order of ids.
	ids := []string{"00000000-0000-4000-8000-000000000003", "00000000-0000-4000-8000-000000000001",
		"00000000-0000-4000-8000-000000000002"}
	names := []string{"a", "b", "c"}
	for i, id := range ids {
		w.must(fsm.CmdRegisterNode, fsm.RegisterNode{Node: structs.Node{ID: id, Name: names[i], APIAddr: "127.0.0.1:1",
			VCPUs: 8, MemoryMiB: 8192}, SecretHash: "h"})
	}
	w.clock.Advance(testMissed*testInterval + time.Millisecond)
	w.m.CheckOnce(context.Background())
	want := []string{ids[1], ids[2], ids[0]}
	if !reflect.DeepEqual(p.order, want) {
		t.Fatalf("ping order %v, want %v (by node id)", p.order, want)
	}
	if p.maxIn != 1 {
		t.Fatalf("%d ping-backs in flight at once, want 1", p.maxIn)
	}
	for _, id := range ids {
		if s := w.node(id).MonitorState; s != structs.MonitorUnreachable {
			t.Fatalf("node %s is %s after CheckOnce returned, want unreachable", id, s)
		}
	}
}
