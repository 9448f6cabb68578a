package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"reflect"
	"sort"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// usageFromVMs recomputes what the derived view keeps from a full read of
// the state: the usage per node, the pending ids sorted by name.
func usageFromVMs(t *testing.T, f *FSM) (map[string]structs.NodeUsage, []string) {
	t.Helper()
	vms, err := f.VMs()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]structs.NodeUsage{}
	var pending []string
	for _, v := range vms {
		if v.NodeID == "" {
			pending = append(pending, v.ID)
			continue
		}
		u := used[v.NodeID]
		u.VMs++
		u.VCPUs += int64(v.Spec.VCPUs)
		u.MemoryMiB += int64(v.Spec.MemoryMiB)
		if g := v.Spec.AntiAffinity; g != "" {
			if u.Groups == nil {
				u.Groups = map[string]int{}
			}
			u.Groups[g]++
		}
		used[v.NodeID] = u
	}
	return used, pending // VMs() is sorted by name
}

// checkView fails the test unless f's derived view is what a full read of
// its state says.
func checkView(t *testing.T, f *FSM, when string) {
	t.Helper()
	wantUsed, wantPending := usageFromVMs(t, f)
	nodes, used := f.Placement()
	if !reflect.DeepEqual(used, wantUsed) {
		t.Fatalf("%s: view usage %v, state says %v", when, used, wantUsed)
	}
	stored, err := f.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(nodes, stored) && !(len(nodes) == 0 && len(stored) == 0) {
		t.Fatalf("%s: view nodes %v, state says %v", when, nodes, stored)
	}
	pend, _, err := f.PendingVMs()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range pend {
		ids = append(ids, v.ID)
	}
	if !reflect.DeepEqual(ids, wantPending) {
		t.Fatalf("%s: view pending %v, state says %v", when, ids, wantPending)
	}
	vms, _ := f.VMs()
	var wantProt, gotProt []string
	for _, v := range vms {
		if v.Spec.HA && v.DesiredState == structs.DesiredRunning && v.NodeID != "" {
			wantProt = append(wantProt, v.ID)
		}
	}
	prot, err := f.ProtectedVMs()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range prot {
		gotProt = append(gotProt, v.ID)
	}
	if !reflect.DeepEqual(gotProt, wantProt) {
		t.Fatalf("%s: view protected %v, state says %v", when, gotProt, wantProt)
	}
	if nv := f.NodesView(); !reflect.DeepEqual(nv, stored) && !(len(nv) == 0 && len(stored) == 0) {
		t.Fatalf("%s: NodesView %v, state says %v", when, nv, stored)
	}
	var wantMigr, gotMigr []string
	wantStates := map[string]int{}
	for _, v := range vms {
		if v.Migration != nil {
			wantMigr = append(wantMigr, v.ID)
		}
		wantStates[v.State]++
	}
	migr, err := f.MigratingVMs()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range migr {
		gotMigr = append(gotMigr, v.ID)
	}
	if !reflect.DeepEqual(gotMigr, wantMigr) {
		t.Fatalf("%s: view migrating %v, state says %v", when, gotMigr, wantMigr)
	}
	if got := f.VMStates(); !reflect.DeepEqual(got, wantStates) {
		t.Fatalf("%s: view VM states %v, state says %v", when, got, wantStates)
	}
	checkFreeIndex(t, f, when, stored, wantUsed)
}

// checkFreeIndex checks the view's free-capacity index against the state:
// it holds exactly the enabled and normal nodes, each with its usage, and
// walks each shape in spread order (least used memory, then vCPUs, then
// name, id) and in bin-packing order (most used memory first).
func checkFreeIndex(t *testing.T, f *FSM, when string, stored []structs.Node, used map[string]structs.NodeUsage) {
	t.Helper()
	want := map[string]structs.NodeUsage{}
	for _, n := range stored {
		if n.ManagementState == structs.NodeEnabled && n.MonitorState == structs.MonitorNormal {
			want[n.ID] = used[n.ID]
		}
	}
	for _, binpack := range []bool{false, true} {
		got := map[string]structs.NodeUsage{}
		var prev *structs.Node
		var prevUsed structs.NodeUsage
		f.Ranked("", nil, binpack, 0, func(n *structs.Node, u *structs.NodeUsage) bool {
			var cur structs.NodeUsage
			if u != nil {
				cur = *u
			}
			if _, dup := got[n.ID]; dup {
				t.Errorf("%s: the index walks node %s twice", when, n.Name)
			}
			got[n.ID] = cur
			if prev != nil && prev.MemoryMiB == n.MemoryMiB && prev.VCPUs == n.VCPUs {
				a, b := prevUsed.MemoryMiB, cur.MemoryMiB
				if binpack {
					a, b = b, a
				}
				if a > b || (a == b && (prevUsed.VCPUs > cur.VCPUs || (prevUsed.VCPUs == cur.VCPUs && prev.Name > n.Name))) {
					t.Errorf("%s: binpack=%v: node %s (%+v) walked before %s (%+v)", when, binpack, prev.Name, prevUsed, n.Name, cur)
				}
			}
			prev, prevUsed = n, cur
			return true
		})
		if len(got) != len(want) {
			t.Fatalf("%s: binpack=%v: the index walks %d nodes, %d are enabled and normal", when, binpack, len(got), len(want))
		}
		for id, u := range want {
			g, ok := got[id]
			if !ok || g.VCPUs != u.VCPUs || g.MemoryMiB != u.MemoryMiB || g.VMs != u.VMs {
				t.Fatalf("%s: binpack=%v: node %s in the index with %+v (%v), state says %+v", when, binpack, id, g, ok, u)
			}
		}
	}
}

// The derived view follows every apply, refused ones included (a refusal
// rolls back and changes nothing), through a random mix of creates,
// placements, moves and deletes.
func TestDerivedViewFollowsApply(t *testing.T) {
	h := newHarness(t)
	rng := rand.New(rand.NewSource(7))
	var nodes []structs.Node
	for i := 0; i < 4; i++ {
		n := node(fmt.Sprintf("hv%d", i))
		nodes = append(nodes, n)
		h.must("", CmdRegisterNode, RegisterNode{Node: n})
	}
	var ids []string
	groups := []string{"", "", "db", "web"}
	for step := 0; step < 400; step++ {
		switch op := rng.Intn(5); {
		case op <= 1 || len(ids) == 0: // create, placed or pending, maybe over capacity
			v := vm(fmt.Sprintf("vm-%03d", step))
			v.Spec.VCPUs, v.Spec.AntiAffinity, v.Spec.HA = 1+rng.Intn(3), groups[rng.Intn(len(groups))], rng.Intn(2) == 0
			to := ""
			if rng.Intn(4) > 0 {
				to = nodes[rng.Intn(len(nodes))].ID
			}
			var fit *Fit
			if to != "" && rng.Intn(2) == 0 {
				fit = &Fit{VCPUs: 8}
			}
			if r := h.apply("", CmdCreateVM, CreateVM{VM: v, NodeID: to, IfFits: fit}); r.Err == nil {
				ids = append(ids, v.ID)
			}
		case op == 2: // move, maybe to no node, maybe refused
			to := ""
			if rng.Intn(3) > 0 {
				to = nodes[rng.Intn(len(nodes))].ID
			}
			_ = h.apply("", CmdPlaceVM, PlaceVM{VMID: ids[rng.Intn(len(ids))], NodeID: to, IfFits: &Fit{VCPUs: 8}, IfPending: rng.Intn(2) == 0})
		case op == 3: // delete
			i := rng.Intn(len(ids))
			h.must("", CmdDeleteVM, DeleteVM{VMID: ids[i]})
			ids = append(ids[:i], ids[i+1:]...)
		default: // desired state: no usage change, but protection
			state := structs.DesiredStopped
			if rng.Intn(2) == 0 {
				state = structs.DesiredRunning
			}
			_ = h.apply("", CmdSetDesired, SetDesired{VMID: ids[rng.Intn(len(ids))], State: state})
		}
		checkView(t, h.f, fmt.Sprintf("step %d", step))
	}
	if _, pending := usageFromVMs(t, h.f); len(pending) == 0 {
		t.Fatalf("no pending VM after 400 steps: the test covers too little")
	}
}

// Restore rebuilds the derived view from the snapshot; the restored FSM
// then decides the capacity compare-and-set as the original does.
func TestDerivedViewRebuiltOnRestore(t *testing.T) {
	h := newHarness(t)
	var nodes []structs.Node
	for i := 0; i < 3; i++ {
		n := node(fmt.Sprintf("hv%d", i))
		nodes = append(nodes, n)
		h.must("", CmdRegisterNode, RegisterNode{Node: n})
	}
	for i := 0; i < 30; i++ {
		to := nodes[i%3].ID
		if i%7 == 0 {
			to = "" // pending
		}
		v := vm(fmt.Sprintf("vm-%02d", i))
		if i%4 == 0 {
			v.Spec.AntiAffinity = fmt.Sprintf("g%d", i)
		}
		h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: to})
	}
	checkView(t, h.f, "original")

	snapBytes := snapshotBytes(t, h.f)

	other := newHarness(t)
	// The restored FSM had a state of its own before: the view must
	// forget it.
	stale := node("stale")
	other.must("", CmdRegisterNode, RegisterNode{Node: stale})
	other.must("", CmdCreateVM, CreateVM{VM: vm("stale-vm"), NodeID: stale.ID})
	if err := other.f.Restore(io.NopCloser(bytes.NewReader(snapBytes))); err != nil {
		t.Fatal(err)
	}
	checkView(t, other.f, "restored")
	wn, wu := h.f.Placement()
	gn, gu := other.f.Placement()
	if !reflect.DeepEqual(wn, gn) || !reflect.DeepEqual(wu, gu) {
		t.Fatalf("restored view differs: nodes %v / %v, usage %v / %v", gn, wn, gu, wu)
	}
	// The same create, asserting a capacity only the 10 VMs on hv0 leave
	// room for, is decided the same on both.
	base := h.index
	for _, x := range []*harness{h, other} {
		x.index = base
		r := x.apply("late", CmdCreateVM, CreateVM{VM: structs.VM{ID: "00000000-0000-4000-8000-000000000001", Name: "late",
			DesiredState: "running", Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}, NodeID: nodes[0].ID, IfFits: &Fit{VCPUs: wu[nodes[0].ID].VCPUs}})
		if !errors.Is(r.Err, structs.ErrConflict) {
			t.Fatalf("a create past the asserted capacity: %v, want a conflict", r.Err)
		}
	}
	want, _ := h.f.Dump()
	got, _ := other.f.Dump()
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("states diverged after the same command")
	}
}

// The capacity compare-and-set of a create (Fit): refused with a conflict
// on FieldIfFits, and nothing written, unless the node still takes the VM.
func TestCreateIfFits(t *testing.T) {
	cases := []struct {
		name    string
		fit     *Fit
		spec    structs.VMSpec
		prepare func(h *harness, n structs.Node)
		refused bool
	}{
		{name: "not asserted: placed past capacity", fit: nil, spec: structs.VMSpec{VCPUs: 8, MemoryMiB: 64}},
		{name: "fits exactly", fit: &Fit{VCPUs: 8}, spec: structs.VMSpec{VCPUs: 6, MemoryMiB: 16384 - 128}},
		{name: "vCPUs taken meanwhile", fit: &Fit{VCPUs: 8}, spec: structs.VMSpec{VCPUs: 7, MemoryMiB: 64}, refused: true},
		{name: "overcommitted capacity asserted", fit: &Fit{VCPUs: 16}, spec: structs.VMSpec{VCPUs: 7, MemoryMiB: 64}},
		{name: "memory taken meanwhile", fit: &Fit{VCPUs: 64}, spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 16384 - 127}, refused: true},
		{name: "anti-affinity group arrived", fit: &Fit{VCPUs: 64}, spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64, AntiAffinity: "db"}, refused: true},
		{name: "other group", fit: &Fit{VCPUs: 64}, spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64, AntiAffinity: "web"}},
		{name: "node disabled meanwhile", fit: &Fit{VCPUs: 64}, spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}, refused: true,
			prepare: func(h *harness, n structs.Node) {
				h.must("", CmdSetManagement, SetManagement{NodeID: n.ID, State: structs.NodeDisabled})
			}},
		{name: "node unreachable meanwhile", fit: &Fit{VCPUs: 64}, spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}, refused: true,
			prepare: func(h *harness, n structs.Node) {
				h.must("", CmdSetMonitor, SetMonitor{NodeID: n.ID, State: structs.MonitorUnreachable})
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			n := node("hv")
			h.must("", CmdRegisterNode, RegisterNode{Node: n})
			// Already there: 2 vCPUs, 128 MiB, one VM of group db.
			first := vm("first")
			first.Spec = structs.VMSpec{VCPUs: 2, MemoryMiB: 128, AntiAffinity: "db"}
			h.must("", CmdCreateVM, CreateVM{VM: first, NodeID: n.ID})
			if tc.prepare != nil {
				tc.prepare(h, n)
			}
			v := vm("new")
			v.Spec = tc.spec
			before, _ := h.f.VMs()
			r := h.apply("req", CmdCreateVM, CreateVM{VM: v, NodeID: n.ID, IfFits: tc.fit})
			after, _ := h.f.VMs()
			if tc.refused {
				if !errors.Is(r.Err, structs.ErrConflict) || structs.AsError(r.Err).Field != FieldIfFits {
					t.Fatalf("got %v, want a conflict on %s", r.Err, FieldIfFits)
				}
				if len(after) != len(before) {
					t.Fatalf("refused create wrote a VM")
				}
			} else if r.Err != nil {
				t.Fatalf("refused: %v", r.Err)
			}
			checkView(t, h.f, "after")
		})
	}
}

// A pending placement (IfPending) is refused once the VM is placed.
func TestPlaceIfPending(t *testing.T) {
	h := newHarness(t)
	a, b := node("a"), node("b")
	h.must("", CmdRegisterNode, RegisterNode{Node: a})
	h.must("", CmdRegisterNode, RegisterNode{Node: b})
	v := vm("v")
	h.must("", CmdCreateVM, CreateVM{VM: v})
	h.must("", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: a.ID, IfPending: true, IfFits: &Fit{VCPUs: 8}})
	r := h.apply("", CmdPlaceVM, PlaceVM{VMID: v.ID, NodeID: b.ID, IfPending: true, IfFits: &Fit{VCPUs: 8}})
	if !errors.Is(r.Err, structs.ErrConflict) {
		t.Fatalf("second pending placement: %v, want a conflict", r.Err)
	}
	got, _ := h.f.VM(v.ID)
	if got.NodeID != a.ID {
		t.Fatalf("vm on %s, want %s", got.NodeID, a.ID)
	}
	checkView(t, h.f, "after")
	ids := []string{}
	pend, _, _ := h.f.PendingVMs()
	for _, p := range pend {
		ids = append(ids, p.ID)
	}
	sort.Strings(ids)
	if len(ids) != 0 {
		t.Fatalf("pending %v, want none", ids)
	}
}

// The view's index of migrating VMs follows a live migration's start and
// its end (success moves the VM, failure leaves it).
func TestDerivedViewMigrating(t *testing.T) {
	h := newHarness(t)
	src, dst := node("src"), node("dst")
	h.must("", CmdRegisterNode, RegisterNode{Node: src})
	h.must("", CmdRegisterNode, RegisterNode{Node: dst})
	var gens []uint64
	var vms []structs.VM
	for i := 0; i < 3; i++ {
		v := vm(fmt.Sprintf("web-%d", i))
		gens = append(gens, h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: src.ID}).Index)
		vms = append(vms, v)
	}
	checkView(t, h.f, "created")
	for i, v := range vms[:2] {
		id := fmt.Sprintf("t%d", i)
		h.must("", CmdPutTask, PutTask{Task: structs.Task{ID: id, Kind: structs.TaskMigrate, State: structs.TaskRunning,
			Steps: []structs.TaskStep{{VMID: v.ID, From: src.ID, To: dst.ID, State: structs.TaskRunning}}}})
		h.must("", CmdMigrationStart, MigrationStart{VMID: v.ID, TaskID: id, To: dst.ID, IfGeneration: gens[i]})
	}
	checkView(t, h.f, "two migrations started")
	if m, _ := h.f.MigratingVMs(); len(m) != 2 {
		t.Fatalf("migrating: %d VMs, want 2", len(m))
	}
	h.must("", CmdMigrationEnd, MigrationEnd{VMID: vms[0].ID, TaskID: "t0", FromNode: src.ID, Generation: gens[0], OK: true})
	h.must("", CmdMigrationEnd, MigrationEnd{VMID: vms[1].ID, TaskID: "t1", FromNode: src.ID, Generation: gens[1], Error: "refused"})
	checkView(t, h.f, "both ended")
	if m, _ := h.f.MigratingVMs(); len(m) != 0 {
		t.Fatalf("migrating after both ended: %d VMs", len(m))
	}
}
