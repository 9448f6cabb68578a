package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

func ha(v *structs.VM) { v.Spec.HA = true }

// haVM is a running ha VM placed on nodeID.
func haVM(id, nodeID string, vcpus, memMiB int, opts ...func(*structs.VM)) structs.VM {
	return vm(id, nodeID, vcpus, memMiB, append([]func(*structs.VM){ha}, opts...)...)
}

func TestReserve(t *testing.T) {
	three := []structs.Node{node("a", 8, 8192), node("b", 8, 8192), node("c", 8, 8192)}
	cases := []struct {
		name      string
		nodes     []structs.Node
		vms       []structs.VM
		tolerate  int
		opt       Options
		wantOK    bool
		wantWorst []string // checked when not nil
		wantLeft  int      // protected VMs the worst case leaves without a node
	}{
		{name: "no protected VMs", nodes: three, tolerate: 1, wantOK: true},
		{name: "room for one failure", nodes: three, tolerate: 1, wantOK: true,
			vms: []structs.VM{haVM("1", "a", 2, 4096), haVM("2", "b", 2, 4096), haVM("3", "c", 2, 4096)}},
		{name: "full nodes break it", nodes: three, tolerate: 1, wantOK: false, wantWorst: []string{"a"}, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 2, 6144), haVM("2", "b", 2, 6144), haVM("3", "c", 2, 6144)}},
		{name: "two failures need more room", nodes: three, tolerate: 2, wantOK: false, wantWorst: []string{"a", "b"}, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 2, 4096), haVM("2", "b", 2, 4096), haVM("3", "c", 2, 4096)}},
		{name: "two failures with small VMs", nodes: three, tolerate: 2, wantOK: true,
			vms: []structs.VM{haVM("1", "a", 2, 2048), haVM("2", "b", 2, 2048), haVM("3", "c", 2, 2048)}},
		{name: "tolerate as many as the nodes", nodes: three, tolerate: 3, wantOK: false, wantWorst: []string{"a", "b", "c"}, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 1, 512)}},
		{name: "tolerate more than the nodes", nodes: three[:2], tolerate: 5, wantOK: false, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 1, 512)}},
		{name: "tolerate more than the nodes without ha VMs", nodes: three[:2], tolerate: 5, wantOK: true,
			vms: []structs.VM{vm("1", "a", 1, 512)}},
		{name: "tolerate 0 is always ok while nothing failed", nodes: three, tolerate: 0, wantOK: true,
			vms: []structs.VM{haVM("1", "a", 8, 8192), haVM("2", "b", 8, 8192), haVM("3", "c", 8, 8192)}},
		{name: "an unreachable node counts as failed", tolerate: 0, wantOK: false, wantLeft: 1,
			nodes: []structs.Node{node("a", 8, 8192, mon(structs.MonitorUnreachable)), node("b", 8, 8192)},
			vms:   []structs.VM{haVM("1", "a", 2, 6144), haVM("2", "b", 2, 6144)}},
		{name: "an unreachable node plus one more failure", tolerate: 1, wantOK: false, wantWorst: []string{"b"}, wantLeft: 1,
			nodes: []structs.Node{node("a", 8, 8192, mon(structs.MonitorUnreachable)), node("b", 8, 8192), node("c", 8, 8192)},
			vms:   []structs.VM{haVM("1", "a", 2, 4096), haVM("2", "b", 2, 6144)}},
		{name: "vCPUs bind without overcommit", nodes: three[:2], tolerate: 1, wantOK: false, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 6, 1024), haVM("2", "b", 6, 1024)}},
		{name: "overcommit makes room", nodes: three[:2], tolerate: 1, opt: Options{CPUOvercommit: 1.5}, wantOK: true,
			vms: []structs.VM{haVM("1", "a", 6, 1024), haVM("2", "b", 6, 1024)}},
		{name: "overcommit rounds down", nodes: three[:2], tolerate: 1, opt: Options{CPUOvercommit: 1.4}, wantOK: false, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 6, 1024), haVM("2", "b", 6, 1024)}}, // 8 × 1.4 = 11.2 → 11 < 12
		{name: "heterogeneous: losing the big node is the worst case", tolerate: 1, wantOK: false, wantWorst: []string{"big"}, wantLeft: 1,
			nodes: []structs.Node{node("big", 32, 32768), node("s1", 8, 8192), node("s2", 8, 8192)},
			vms: []structs.VM{haVM("1", "big", 2, 6144), haVM("2", "big", 2, 6144), haVM("3", "big", 2, 6144),
				haVM("4", "s1", 1, 1024), haVM("5", "s2", 1, 1024)}},
		{name: "heterogeneous: the big node absorbs a small one", tolerate: 1, wantOK: true,
			nodes: []structs.Node{node("big", 32, 32768), node("s1", 8, 8192), node("s2", 8, 8192)},
			vms:   []structs.VM{haVM("1", "big", 2, 2048), haVM("2", "s1", 2, 6144), haVM("3", "s2", 2, 6144)}},
		{name: "a disabled node receives nothing but its VMs count", tolerate: 1, wantOK: false, wantWorst: []string{"b"}, wantLeft: 1,
			nodes: []structs.Node{node("a", 8, 8192, mgmt(structs.NodeDisabled)), node("b", 8, 8192), node("c", 8, 8192)},
			vms:   []structs.VM{haVM("1", "a", 2, 4096), haVM("2", "b", 2, 6144), haVM("3", "c", 2, 3072)}},
		{name: "stopped ha and plain VMs take room but need none", nodes: three[:2], tolerate: 1, wantOK: false, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 2, 4096), vm("2", "b", 2, 2048), haVM("3", "b", 2, 4096, stopped())}},
		{name: "stopped ha VMs alone need no reservation", nodes: three[:2], tolerate: 1, wantOK: true,
			vms: []structs.VM{haVM("1", "a", 2, 8192, stopped()), haVM("2", "b", 2, 8192, stopped())}},
		{name: "anti-affinity is kept on failover", nodes: three, tolerate: 1, wantOK: false, wantLeft: 1,
			vms: []structs.VM{haVM("1", "a", 1, 512, group("g")), haVM("2", "b", 1, 512, group("g")), haVM("3", "c", 1, 512, group("g"))}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := Reserve(tc.nodes, tc.vms, tc.tolerate, tc.opt)
			if r.OK != tc.wantOK {
				t.Fatalf("ok = %v, want %v: %s", r.OK, tc.wantOK, r.Reason)
			}
			if tc.wantWorst != nil && !reflect.DeepEqual(r.WorstCase, tc.wantWorst) {
				t.Fatalf("worst case %v, want %v: %s", r.WorstCase, tc.wantWorst, r.Reason)
			}
			if !tc.wantOK && len(r.Unplaced) != tc.wantLeft {
				t.Fatalf("unplaced %v, want %d: %s", r.Unplaced, tc.wantLeft, r.Reason)
			}
			if r.Rule != RuleTolerateFailures || r.Reason == "" || len(r.Nodes) != len(tc.nodes) {
				t.Fatalf("reservation %+v", r)
			}
			// Same input in another order: same answer.
			nodes, vms := slices.Clone(tc.nodes), slices.Clone(tc.vms)
			rng := rand.New(rand.NewPCG(1, 2))
			rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
			rng.Shuffle(len(vms), func(i, j int) { vms[i], vms[j] = vms[j], vms[i] })
			if again := Reserve(nodes, vms, tc.tolerate, tc.opt); !reflect.DeepEqual(again, r) {
				t.Fatalf("order changed the answer:\n%+v\n%+v", r, again)
			}
		})
	}
}

// TestReserveShares: the per-node figures of a small cluster, by hand.
func TestReserveShares(t *testing.T) {
	nodes := []structs.Node{node("a", 8, 8192), node("b", 8, 8192), node("c", 4, 4096, mgmt(structs.NodeDisabled))}
	vms := []structs.VM{haVM("1", "a", 2, 2048), haVM("2", "b", 4, 3072), vm("3", "b", 1, 1024), haVM("4", "c", 1, 1024)}
	r := Reserve(nodes, vms, 1, Options{})
	if !r.OK || r.SetsTried != 3 || !r.Exhaustive || r.ProtectedVMs != 3 {
		t.Fatalf("reservation %+v", r)
	}
	got := map[string]structs.NodeReserve{}
	for _, n := range r.Nodes {
		got[n.Name] = n
	}
	// a takes b's 4 vCPU/3 GiB VM when b fails, c's 1/1 GiB when c fails:
	// the most is b's. b takes a's 2 vCPU/2 GiB, or c's: the most is a's.
	a, b, c := got["a"], got["b"], got["c"]
	if a.ReservedVCPUs != 4 || a.ReservedMemoryMiB != 3072 || a.SpareVCPUs != 2 || a.SpareMemoryMiB != 3072 {
		t.Fatalf("a: %+v", a)
	}
	if b.ReservedVCPUs != 2 || b.ReservedMemoryMiB != 2048 || b.UsedMemoryMiB != 4096 || b.SpareMemoryMiB != 2048 {
		t.Fatalf("b: %+v", b)
	}
	if c.Receiver || c.SpareVCPUs != 0 || c.HAMemoryMiB != 1024 {
		t.Fatalf("c: %+v", c)
	}
}

// TestReserveManyNodes: past MaxFailureSets only the heaviest sets are
// tried, and they still find the node whose loss breaks the reservation.
func TestReserveManyNodes(t *testing.T) {
	var nodes []structs.Node
	var vms []structs.VM
	for i := range 40 {
		id := fmt.Sprintf("n%02d", i)
		nodes = append(nodes, node(id, 16, 16384))
		vms = append(vms, haVM("v"+id, id, 1, 1024))
	}
	r := Reserve(nodes, vms, 3, Options{}) // C(40,3) = 9880 sets
	if !r.OK || r.Exhaustive || r.SetsTried < 1 || r.SetsTried > 4 {
		t.Fatalf("reservation %+v", r)
	}
	// One node carries ha VMs that nobody else can take whole.
	vms = append(vms, haVM("huge", "n07", 1, 15500)) // every other node has 15360 MiB free
	r = Reserve(nodes, vms, 3, Options{})
	if r.OK || !slices.Contains(r.WorstCase, "n07") || !slices.Contains(r.Unplaced, "huge") {
		t.Fatalf("reservation %+v", r)
	}
	if !binomialAtMost(10, 3, 120) || binomialAtMost(10, 3, 119) || !binomialAtMost(5, 5, 1) {
		t.Fatal("binomialAtMost")
	}
}

func TestAdmit(t *testing.T) {
	nodes := []structs.Node{node("a", 8, 8192), node("b", 8, 8192)}
	vms := []structs.VM{haVM("1", "a", 2, 4096)}
	cases := []struct {
		name     string
		vm       structs.VM
		nodeID   string
		tolerate int
		refused  bool
	}{
		{"fits with room to fail over", haVM("new", "", 2, 2048), "b", 1, false},
		{"would break the reservation", haVM("new", "", 2, 5120), "b", 1, true},
		{"plain VMs are not admission-checked", vm("new", "", 2, 5120), "b", 1, false},
		{"tolerate 0 disables the check", haVM("new", "", 2, 5120), "b", 0, false},
		{"a pending VM is not placed yet", haVM("new", "", 2, 5120), "", 1, false},
		{"a start of a stopped VM counts it", haVM("1", "a", 2, 4096, stopped()), "a", 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Admit(nodes, vms, tc.vm, tc.nodeID, tc.tolerate, Options{})
			if (err != nil) != tc.refused {
				t.Fatalf("Admit = %v, refused want %v", err, tc.refused)
			}
			if err != nil && (!errors.Is(err, structs.ErrConflict) || !strings.Contains(err.Error(), RuleTolerateFailures)) {
				t.Fatalf("refusal %q: want a conflict naming %s", err, RuleTolerateFailures)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	nodes := []structs.Node{node("a", 8, 8192), node("b", 8, 16384), node("c", 8, 4096), node("d", 8, 8192, mon(structs.MonitorUnreachable))}
	vms := []structs.VM{
		haVM("1", "a", 2, 4096), haVM("2", "a", 2, 2048), haVM("3", "b", 2, 6144),
		haVM("4", "d", 1, 1024), vm("5", "c", 1, 1024), haVM("6", "c", 1, 1024, stopped()),
	}
	r := Reserve(nodes, vms, 1, Options{})
	plan := Plan(nodes, vms, Options{}, r)
	got := map[string]structs.FailoverEntry{}
	var order []string
	for _, e := range plan {
		got[e.VMID] = e
		order = append(order, e.VMName)
	}
	if !slices.IsSorted(order) || len(plan) != 4 {
		t.Fatalf("plan %+v: want the 4 protected VMs in name order", plan)
	}
	// d is unreachable: its VM goes where it would go now (spread: the
	// largest free share, b). When a fails its VMs go to b (c has 2 GiB
	// free); when b fails its 6 GiB VM fits nowhere.
	for id, want := range map[string]string{"1": "b", "2": "b", "4": "b"} {
		if got[id].TargetName != want {
			t.Errorf("vm %s → %q, want %s (%s)", id, got[id].TargetName, want, got[id].Reason)
		}
	}
	if e := got["3"]; e.Target != "" || e.Safe || !strings.Contains(e.Reason, "no node") {
		t.Errorf("vm 3: %+v, want no target", e)
	}
	if r.OK {
		t.Fatalf("reservation holds, want broken: %s", r.Reason)
	}
	for _, e := range plan {
		if e.Safe {
			t.Errorf("vm %s safe under a broken reservation", e.VMName)
		}
	}
	// With room, every entry is safe and the plan is independent of input order.
	nodes = append(nodes[:3], node("e", 16, 16384))
	r = Reserve(nodes, vms, 1, Options{})
	plan = Plan(nodes, vms, Options{}, r)
	slices.Reverse(vms)
	slices.Reverse(nodes)
	if !r.OK || !reflect.DeepEqual(plan, Plan(nodes, vms, Options{}, Reserve(nodes, vms, 1, Options{}))) {
		t.Fatalf("reservation %v or plan depends on input order: %s", r.OK, r.Reason)
	}
	for _, e := range plan {
		if !e.Safe || e.Target == "" || e.Target == e.NodeID {
			t.Errorf("entry %+v", e)
		}
	}
}

func prio(p string) func(*structs.VM) { return func(v *structs.VM) { v.Spec.Priority = p } }

func TestRestartOrder(t *testing.T) {
	cases := []struct {
		name string
		vms  []structs.VM
		want []string // ids
	}{
		{"name then id", []structs.VM{vm("2", "a", 1, 1), vm("1", "a", 1, 1)}, []string{"1", "2"}},
		{"priority first", []structs.VM{vm("1", "a", 1, 1, prio(structs.PriorityLow)), vm("2", "a", 1, 1),
			vm("3", "a", 1, 1, prio(structs.PriorityHigh)), vm("4", "a", 1, 1, prio(structs.PriorityMedium))}, []string{"3", "2", "4", "1"}},
		{"empty is medium", []structs.VM{vm("2", "a", 1, 1, prio(structs.PriorityMedium)), vm("1", "a", 1, 1)}, []string{"1", "2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vms := slices.Clone(tc.vms)
			RestartOrder(vms)
			var got []string
			for _, v := range vms {
				got = append(got, v.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("order %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPlanPriority: when a failed node's VMs do not all fit, the plan
// (like the recovery duty) places the higher priority first, whatever the
// names say.
func TestPlanPriority(t *testing.T) {
	nodes := []structs.Node{node("a", 8, 8192), node("b", 8, 4096)}
	for _, tc := range []struct {
		name           string
		p1, p2         string
		placed, unplac string
	}{
		{"same priority: name order", "", "", "1", "2"},
		{"high beats the name", structs.PriorityLow, structs.PriorityHigh, "2", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vms := []structs.VM{haVM("1", "a", 1, 4096, prio(tc.p1)), haVM("2", "a", 1, 4096, prio(tc.p2))}
			plan := Plan(nodes, vms, Options{}, Reserve(nodes, vms, 1, Options{}))
			got := map[string]string{}
			for _, e := range plan {
				if e.NodeID == "a" {
					got[e.VMID] = e.Target
				}
			}
			if got[tc.placed] != "b" || got[tc.unplac] != "" {
				t.Fatalf("targets %v: want vm %s on b and vm %s nowhere", got, tc.placed, tc.unplac)
			}
		})
	}
}
