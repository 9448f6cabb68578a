package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/google/uuid"
	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type harness struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	f, err := Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &harness{t: t, f: f}
}

// apply proposes one command as Raft would deliver it.
func (h *harness) apply(reqID string, typ CommandType, payload any) *Result {
	h.t.Helper()
	data, err := NewCommand(reqID, typ, t0.Add(time.Duration(h.index)*time.Second), payload)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.applyRaw(data)
}

// applyRaw delivers one log entry's bytes at the next index.
func (h *harness) applyRaw(data []byte) *Result {
	h.t.Helper()
	h.index++
	return h.f.Apply(&raft.Log{Index: h.index, Term: 1, Type: raft.LogCommand, Data: data}).(*Result)
}

func (h *harness) must(reqID string, typ CommandType, payload any) *Result {
	h.t.Helper()
	r := h.apply(reqID, typ, payload)
	if r.Err != nil {
		h.t.Fatalf("%s: %v", typ, r.Err)
	}
	return r
}

func node(name string) structs.Node {
	return structs.Node{ID: uuid.NewString(), Name: name, APIAddr: "127.0.0.1:4660", VCPUs: 8, MemoryMiB: 16384}
}

func vm(name string) structs.VM {
	return structs.VM{ID: uuid.NewString(), Name: name, DesiredState: structs.DesiredRunning,
		Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
}

func TestCommands(t *testing.T) {
	h := newHarness(t)
	n1, n2 := node("hv1"), node("hv2")
	h.must("r1", CmdRegisterNode, RegisterNode{Node: n1, SecretHash: "h1"})
	h.must("r2", CmdRegisterNode, RegisterNode{Node: n2, SecretHash: "h2"})
	v := vm("web")
	r := h.must("r3", CmdCreateVM, CreateVM{VM: v, NodeID: n1.ID})
	got, err := h.f.VM(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.NodeID != n1.ID || got.Generation != r.Index || got.State != structs.StateUnknown {
		t.Fatalf("created vm = %+v, want node %s generation %d state unknown", got, n1.ID, r.Index)
	}
	onNode, idx, _ := h.f.VMsOnNode(n1.ID)
	if len(onNode) != 1 || idx != r.Index {
		t.Fatalf("VMsOnNode = %d vms at index %d, want 1 at %d", len(onNode), idx, r.Index)
	}

	// Observation from the placement node counts; from another node it does not.
	h.must("r4", CmdObserve, Observe{NodeID: n2.ID, Observations: []structs.VMObservation{{VMID: v.ID, State: "running", Generation: r.Index}}})
	if got, _ := h.f.VM(v.ID); got.State != structs.StateUnknown {
		t.Fatalf("observation from another node changed state to %q", got.State)
	}
	before := h.f.NodeIndex(n1.ID)
	h.must("r5", CmdObserve, Observe{NodeID: n1.ID, Observations: []structs.VMObservation{{VMID: v.ID, State: "running", Reason: "booted", Generation: r.Index}}})
	if got, _ := h.f.VM(v.ID); got.State != structs.StateRunning {
		t.Fatalf("state = %q, want running", got.State)
	}
	if after := h.f.NodeIndex(n1.ID); after != before {
		t.Fatalf("an observation woke the node's desired-state watch (%d → %d)", before, after)
	}

	// Move with compare-and-set: a stale generation is refused.
	if r := h.apply("r6", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: n2.ID, IfGeneration: r.Index + 100}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("stale place: err = %v, want conflict", r.Err)
	}
	pr := h.must("r7", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: n2.ID, IfGeneration: r.Index})
	got, _ = h.f.VM(v.ID)
	if got.NodeID != n2.ID || got.Generation != pr.Index || got.Generation <= r.Index || got.State != structs.StateUnknown {
		t.Fatalf("after move: %+v", got)
	}
	if on1, _, _ := h.f.VMsOnNode(n1.ID); len(on1) != 0 {
		t.Fatalf("node 1 still lists %d VMs", len(on1))
	}
	// Removing a node with VMs is refused; without, allowed.
	if r := h.apply("r8", CmdRemoveNode, RemoveNode{NodeID: n2.ID}); !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("remove busy node: err = %v, want conflict", r.Err)
	}
	h.must("r9", CmdRemoveNode, RemoveNode{NodeID: n1.ID})
	h.must("r10", CmdDeleteVM, DeleteVM{VMID: v.ID})
	if _, err := h.f.VM(v.ID); !structs.IsNotFound(err) {
		t.Fatalf("deleted vm: err = %v", err)
	}
	if _, err := h.f.ResolveVM("web"); !structs.IsNotFound(err) {
		t.Fatalf("deleted vm name still resolves: %v", err)
	}
	ev, _ := h.f.Events(0, 100)
	if len(ev) < 6 {
		t.Fatalf("only %d events recorded", len(ev))
	}
}

// TestRefusedCommandsChangeNothing: a command the state no longer allows
// (a name taken, an object gone) is refused with the field at fault, and
// changes nothing but the applied index and the request record. Input
// rules (name syntax, limits, enum values) are the endpoints' business:
// chime/server's TestBadInputIsRefusedAndChangesNothing.
func TestRefusedCommandsChangeNothing(t *testing.T) {
	h := newHarness(t)
	n := node("hv1")
	h.must("", CmdRegisterNode, RegisterNode{Node: n})
	v := vm("db")
	h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: n.ID})
	other := node("hv1") // same name, other id
	bad := vm("db")      // same name
	sameID := vm("other")
	sameID.ID = v.ID
	tests := []struct {
		name  string
		typ   CommandType
		p     any
		field string
	}{
		{"duplicate vm name", CmdCreateVM, CreateVM{VM: bad}, "name"},
		{"duplicate vm id", CmdCreateVM, CreateVM{VM: sameID}, "id"},
		{"unknown node", CmdCreateVM, CreateVM{VM: vm("y"), NodeID: uuid.NewString()}, "node_id"},
		{"node name taken", CmdRegisterNode, RegisterNode{Node: other}, "name"},
		{"unknown node management", CmdSetManagement, SetManagement{NodeID: uuid.NewString(), State: structs.NodeDisabled}, "node_id"},
		{"unknown node monitor", CmdSetMonitor, SetMonitor{NodeID: uuid.NewString(), State: structs.MonitorError}, "node_id"},
		{"unknown vm", CmdSetDesired, SetDesired{VMID: uuid.NewString(), State: "stopped"}, "vm_id"},
		{"heartbeat of an unknown node", CmdHeartbeat, Heartbeat{NodeID: uuid.NewString()}, "node_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := h.f.Dump()
			idx := h.f.Index()
			r := h.apply("req-"+tt.name, tt.typ, tt.p)
			var e *structs.Error
			if !errors.As(r.Err, &e) || e.Field != tt.field {
				t.Fatalf("err = %v, want an api error naming field %q", r.Err, tt.field)
			}
			if h.f.Index() != idx+1 {
				t.Fatalf("index %d after a refusal, want %d: a refusal is applied (as a refusal)", h.f.Index(), idx+1)
			}
			if _, aerr, seen := h.f.Applied("req-" + tt.name); !seen || aerr == nil {
				t.Fatalf("refusal not recorded for its request id (seen %v, err %v)", seen, aerr)
			}
			after, _ := h.f.Dump()
			for _, b := range []string{"meta", "requests", "request_order"} {
				delete(before, b)
				delete(after, b)
			}
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("state changed by a refused command")
			}
		})
	}
}

// TestApplyDoesNotJudgeInput: what the log says is applied. A limit
// changed in a newer version must not make old and new servers apply the
// same entry differently, so Apply never re-checks input.
func TestApplyDoesNotJudgeInput(t *testing.T) {
	h := newHarness(t)
	n := node("Bad_Name")
	h.must("", CmdRegisterNode, RegisterNode{Node: n})
	big := structs.VM{ID: uuid.NewString(), Name: "x", DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 257, MemoryMiB: 15}}
	h.must("", CmdCreateVM, CreateVM{VM: big, NodeID: n.ID})
	if got, err := h.f.VM(big.ID); err != nil || got.Spec.VCPUs != 257 {
		t.Fatalf("vm beyond today's limits: %+v, %v; want it applied as logged", got, err)
	}
	if got, err := h.f.ResolveNode("Bad_Name"); err != nil || got.ID != n.ID {
		t.Fatalf("node with a name today's endpoint refuses: %v, %v; want it applied as logged", got, err)
	}
}

func TestRetriedRequestAppliesOnce(t *testing.T) {
	h := newHarness(t)
	n := node("hv1")
	h.must("reg", CmdRegisterNode, RegisterNode{Node: n})
	first := h.must("create-1", CmdCreateVM, CreateVM{VM: vm("a"), NodeID: n.ID})
	// The same request id again (the client retried after losing the
	// answer), even with another payload, applies nothing.
	second := h.apply("create-1", CmdCreateVM, CreateVM{VM: vm("b"), NodeID: n.ID})
	if !second.Duplicate || second.ObjectID != first.ObjectID || second.Err != nil {
		t.Fatalf("retry = %+v, want duplicate of %s", second, first.ObjectID)
	}
	vms, _ := h.f.VMs()
	if len(vms) != 1 {
		t.Fatalf("%d VMs after a retried create, want 1", len(vms))
	}
	// A failed request stays failed on retry.
	bad := h.apply("create-2", CmdCreateVM, CreateVM{VM: vm("a")})
	again := h.apply("create-2", CmdCreateVM, CreateVM{VM: vm("c")})
	if bad.Err == nil || again.Err == nil || again.Err.Error() != bad.Err.Error() {
		t.Fatalf("failed request retried: first %v, then %v", bad.Err, again.Err)
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	h := newHarness(t)
	var nodes []structs.Node
	for i := 0; i < 3; i++ {
		n := node(fmt.Sprintf("hv%d", i))
		nodes = append(nodes, n)
		h.must(fmt.Sprintf("n%d", i), CmdRegisterNode, RegisterNode{Node: n})
	}
	for i := 0; i < 50; i++ {
		r := h.must(fmt.Sprintf("v%d", i), CmdCreateVM, CreateVM{VM: vm(fmt.Sprintf("vm-%d", i)), NodeID: nodes[i%3].ID})
		if i%5 == 0 {
			h.must("", CmdSetDesired, SetDesired{VMID: r.ObjectID, State: "stopped"})
		}
	}
	h.must("", CmdSetMonitor, SetMonitor{NodeID: nodes[1].ID, State: structs.MonitorError, Faults: []string{"disk"}})
	h.must("", CmdPutTask, PutTask{Task: structs.Task{ID: "t1", Kind: structs.TaskDrain, State: structs.TaskRunning, NodeID: nodes[2].ID}})

	snapBytes := snapshotBytes(t, h.f)

	other := newHarness(t)
	if err := other.f.Restore(io.NopCloser(bytes.NewReader(snapBytes))); err != nil {
		t.Fatal(err)
	}
	want, _ := h.f.Dump()
	got, _ := other.f.Dump()
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("restored state differs from the original")
	}
	if other.f.Index() != h.f.Index() {
		t.Fatalf("restored index %d, want %d", other.f.Index(), h.f.Index())
	}
	// Applying the same further commands to both keeps them identical.
	base := h.index
	for _, x := range []*harness{h, other} {
		x.index = base
		x.must("after", CmdCreateVM, CreateVM{VM: structs.VM{ID: "00000000-0000-4000-8000-000000000001", Name: "late", DesiredState: "running", Spec: structs.VMSpec{VCPUs: 2, MemoryMiB: 128}}, NodeID: nodes[0].ID})
	}
	want, _ = h.f.Dump()
	got, _ = other.f.Dump()
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("states diverged after the same command")
	}
	// A garbage snapshot is refused and the live state is kept.
	if err := other.f.Restore(io.NopCloser(bytes.NewReader([]byte("not a bolt file")))); err == nil {
		t.Fatalf("garbage snapshot accepted")
	}
	if vms, _ := other.f.VMs(); len(vms) != 51 {
		t.Fatalf("after a refused restore: %d VMs, want 51", len(vms))
	}
}

func TestResolve(t *testing.T) {
	h := newHarness(t)
	n := node("hv1")
	h.must("", CmdRegisterNode, RegisterNode{Node: n})
	a := vm("alpha")
	a.ID = "aaaa1111-0000-4000-8000-000000000000"
	b := vm("beta")
	b.ID = "aaaa2222-0000-4000-8000-000000000000"
	h.must("", CmdCreateVM, CreateVM{VM: a})
	h.must("", CmdCreateVM, CreateVM{VM: b})
	tests := []struct {
		ref, want string
		err       error
	}{
		{a.ID, a.ID, nil},
		{"beta", b.ID, nil},
		{"aaaa1", a.ID, nil},
		{"aaaa", "", structs.ErrInvalid},
		{"zzz", "", structs.ErrNotFound},
		{"", "", structs.ErrInvalid},
	}
	for _, tt := range tests {
		got, err := h.f.ResolveVM(tt.ref)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("ResolveVM(%q) err = %v, want %v", tt.ref, err, tt.err)
			}
			continue
		}
		if err != nil || got.ID != tt.want {
			t.Errorf("ResolveVM(%q) = %v, %v; want %s", tt.ref, got, err, tt.want)
		}
	}
	if got, err := h.f.ResolveNode("hv1"); err != nil || got.ID != n.ID {
		t.Errorf("ResolveNode(hv1) = %v, %v", got, err)
	}
}

// snapshotBytes is f's snapshot as Raft would persist it.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	return sink.Bytes()
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }

// TestPlaceVMThenEvent: the event a placement carries (the HA duty's
// ha.restarted with its evidence) is recorded in the move's own entry,
// right after vm.placed, and not at all when the move is refused.
func TestPlaceVMThenEvent(t *testing.T) {
	h := newHarness(t)
	n1, n2 := node("hv1"), node("hv2")
	h.must("", CmdRegisterNode, RegisterNode{Node: n1, SecretHash: "h1"})
	h.must("", CmdRegisterNode, RegisterNode{Node: n2, SecretHash: "h2"})
	v := vm("web")
	gen := h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: n1.ID}).Index
	then := &structs.Event{Kind: "ha.restarted", NodeID: n1.ID, Message: "evidence: isolation lease expired"}
	kinds := func(r *Result) []string {
		t.Helper()
		evs, err := h.f.Events(0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			if e.Index == r.Index {
				out = append(out, e.Kind)
				if e.Kind == then.Kind && (e.VMID != v.ID || e.Message != then.Message || e.NodeID != n1.ID) {
					t.Errorf("recorded %+v, want the vm, the old node and the message", e)
				}
			}
		}
		return out
	}
	cases := []struct {
		name string
		p    PlaceVM
		err  error
		want []string
	}{
		{"refused: stale generation", PlaceVM{VMID: v.ID, NodeID: n2.ID, IfGeneration: gen + 100, Then: then}, structs.ErrConflict, nil},
		{"applied", PlaceVM{VMID: v.ID, NodeID: n2.ID, IfGeneration: gen, Then: then}, nil, []string{"vm.placed", "ha.restarted"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.apply("", CmdPlaceVM, c.p)
			if !errors.Is(r.Err, c.err) {
				t.Fatalf("err = %v, want %v", r.Err, c.err)
			}
			if got := kinds(r); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("events of the entry = %v, want %v", got, c.want)
			}
		})
	}
}

// TestAppendEvents: a CmdEvents entry appends its events in order, all at
// the entry's index, and an empty one is refused with nothing appended.
func TestAppendEvents(t *testing.T) {
	h := newHarness(t)
	msgs := func(idx uint64) []string {
		t.Helper()
		evs, err := h.f.Events(0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			if e.Index == idx {
				out = append(out, e.Kind+":"+e.Message)
			}
		}
		return out
	}
	cases := []struct {
		name string
		evs  []structs.Event
		err  error
		want []string
	}{
		{"three in order", []structs.Event{{Kind: structs.EventAudit, Message: "a"}, {Kind: structs.EventAudit, Message: "b"}, {Kind: "x", Message: "c"}},
			nil, []string{"audit:a", "audit:b", "x:c"}},
		{"one", []structs.Event{{Kind: structs.EventAudit, Message: "d"}}, nil, []string{"audit:d"}},
		{"none: refused", nil, structs.ErrInvalid, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.apply("", CmdEvents, AppendEvents{Events: c.evs})
			if !errors.Is(r.Err, c.err) {
				t.Fatalf("err = %v, want %v", r.Err, c.err)
			}
			if got := msgs(r.Index); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("events of the entry = %v, want %v", got, c.want)
			}
		})
	}
}
