package scheduler

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

// node returns an enabled, normal node whose name is its id unless changed by opts.
func node(id string, vcpus, memMiB int, opts ...func(*structs.Node)) structs.Node {
	n := structs.Node{ID: id, Name: id, VCPUs: vcpus, MemoryMiB: memMiB,
		ManagementState: structs.NodeEnabled, MonitorState: structs.MonitorNormal}
	for _, o := range opts {
		o(&n)
	}
	return n
}

func mgmt(s string) func(*structs.Node) { return func(n *structs.Node) { n.ManagementState = s } }
func mon(s string) func(*structs.Node)  { return func(n *structs.Node) { n.MonitorState = s } }
func named(s string) func(*structs.Node) {
	return func(n *structs.Node) { n.Name = s }
}

// vm returns a running VM placed on nodeID ("" for pending).
func vm(id, nodeID string, vcpus, memMiB int, opts ...func(*structs.VM)) structs.VM {
	v := structs.VM{ID: id, Name: "vm-" + id, NodeID: nodeID, DesiredState: structs.DesiredRunning,
		Spec: structs.VMSpec{VCPUs: vcpus, MemoryMiB: memMiB}}
	for _, o := range opts {
		o(&v)
	}
	return v
}

func group(g string) func(*structs.VM) { return func(v *structs.VM) { v.Spec.AntiAffinity = g } }
func stopped() func(*structs.VM) {
	return func(v *structs.VM) { v.DesiredState = structs.DesiredStopped }
}

func TestPlace(t *testing.T) {
	newVM := vm("new", "", 2, 1024)
	cases := []struct {
		name    string
		nodes   []structs.Node
		vms     []structs.VM
		req     Request
		opt     Options
		want    string // node id; "" when an error is expected
		wantErr error
		wantMsg string // substring of the error
	}{
		{name: "empty node list", req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: "no nodes"},
		{name: "enabled and normal", nodes: []structs.Node{node("a", 4, 4096)}, req: Request{VM: newVM}, want: "a"},

		// Eligibility by state.
		{name: "disabled", nodes: []structs.Node{node("a", 4, 4096, mgmt(structs.NodeDisabled))}, req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: "1 management_state disabled"},
		{name: "drained", nodes: []structs.Node{node("a", 4, 4096, mgmt(structs.NodeDrained))}, req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: "1 management_state drained"},
		{name: "management state unset", nodes: []structs.Node{node("a", 4, 4096, mgmt(""))}, req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: `management_state ""`},
		{name: "unreachable", nodes: []structs.Node{node("a", 4, 4096, mon(structs.MonitorUnreachable))}, req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: "1 monitor_state unreachable"},
		{name: "error", nodes: []structs.Node{node("a", 4, 4096, mon(structs.MonitorError))}, req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: "1 monitor_state error"},
		{name: "only the enabled normal node of several", nodes: []structs.Node{
			node("a", 64, 65536, mgmt(structs.NodeDisabled)),
			node("b", 64, 65536, mgmt(structs.NodeDrained)),
			node("c", 64, 65536, mon(structs.MonitorUnreachable)),
			node("d", 64, 65536, mon(structs.MonitorError)),
			node("e", 4, 4096),
		}, req: Request{VM: newVM}, want: "e"},
		{name: "reasons are counted", nodes: []structs.Node{
			node("a", 4, 4096, mgmt(structs.NodeDrained)),
			node("b", 4, 4096, mgmt(structs.NodeDrained)),
			node("c", 1, 4096),
			node("d", 4, 512),
			node("e", 4, 4096),
		}, req: Request{VM: newVM, Exclude: []string{"e"}}, wantErr: ErrNoCapacity,
			wantMsg: "5 nodes rejected: 2 management_state drained, 1 excluded, 1 not enough free memory, 1 not enough free vCPUs"},

		// Capacity edges.
		{name: "exact vCPU fit", nodes: []structs.Node{node("a", 4, 8192)}, vms: []structs.VM{vm("x", "a", 2, 1024)},
			req: Request{VM: vm("new", "", 2, 1024)}, want: "a"},
		{name: "one vCPU over", nodes: []structs.Node{node("a", 4, 8192)}, vms: []structs.VM{vm("x", "a", 2, 1024)},
			req: Request{VM: vm("new", "", 3, 1024)}, wantErr: ErrNoCapacity, wantMsg: "not enough free vCPUs"},
		{name: "exact memory fit", nodes: []structs.Node{node("a", 8, 4096)}, vms: []structs.VM{vm("x", "a", 1, 3072)},
			req: Request{VM: vm("new", "", 1, 1024)}, want: "a"},
		{name: "one MiB over", nodes: []structs.Node{node("a", 8, 4096)}, vms: []structs.VM{vm("x", "a", 1, 3072)},
			req: Request{VM: vm("new", "", 1, 1025)}, wantErr: ErrNoCapacity, wantMsg: "not enough free memory"},
		{name: "zero-capacity node", nodes: []structs.Node{node("a", 0, 0)}, req: Request{VM: newVM},
			wantErr: ErrNoCapacity, wantMsg: "not enough free vCPUs"},
		{name: "VMs on unknown nodes are ignored", nodes: []structs.Node{node("a", 2, 1024)},
			vms: []structs.VM{vm("x", "gone", 64, 65536)}, req: Request{VM: newVM}, want: "a"},
		{name: "pending VMs reserve nothing", nodes: []structs.Node{node("a", 2, 1024)},
			vms: []structs.VM{vm("x", "", 64, 65536)}, req: Request{VM: newVM}, want: "a"},

		// Overcommit.
		{name: "no overcommit by default", nodes: []structs.Node{node("a", 4, 65536)}, vms: []structs.VM{vm("x", "a", 4, 1024)},
			req: Request{VM: vm("new", "", 1, 1024)}, wantErr: ErrNoCapacity, wantMsg: "not enough free vCPUs"},
		{name: "overcommit 2 exact fit", nodes: []structs.Node{node("a", 4, 65536)}, vms: []structs.VM{vm("x", "a", 6, 1024)},
			req: Request{VM: vm("new", "", 2, 1024)}, opt: Options{CPUOvercommit: 2}, want: "a"},
		{name: "overcommit 2 one over", nodes: []structs.Node{node("a", 4, 65536)}, vms: []structs.VM{vm("x", "a", 6, 1024)},
			req: Request{VM: vm("new", "", 3, 1024)}, opt: Options{CPUOvercommit: 2}, wantErr: ErrNoCapacity},
		{name: "overcommit rounds down to whole vCPUs", nodes: []structs.Node{node("a", 3, 65536)},
			req: Request{VM: vm("new", "", 5, 1024)}, opt: Options{CPUOvercommit: 1.5}, wantErr: ErrNoCapacity},
		{name: "overcommit 1.5 of 3 holds 4", nodes: []structs.Node{node("a", 3, 65536)},
			req: Request{VM: vm("new", "", 4, 1024)}, opt: Options{CPUOvercommit: 1.5}, want: "a"},
		{name: "overcommit 1.1 of 10 holds 11 despite float rounding", nodes: []structs.Node{node("a", 10, 65536)},
			req: Request{VM: vm("new", "", 11, 1024)}, opt: Options{CPUOvercommit: 1.1}, want: "a"},
		{name: "overcommit never applies to memory", nodes: []structs.Node{node("a", 4, 1024)},
			req: Request{VM: vm("new", "", 1, 2048)}, opt: Options{CPUOvercommit: 4}, wantErr: ErrNoCapacity, wantMsg: "memory"},

		// Stopped VMs keep their reservation; the VM itself does not count.
		{name: "stopped VM keeps its memory", nodes: []structs.Node{node("a", 8, 4096)},
			vms: []structs.VM{vm("x", "a", 1, 4096, stopped())}, req: Request{VM: newVM}, wantErr: ErrNoCapacity, wantMsg: "memory"},
		{name: "stopped VM keeps its vCPUs", nodes: []structs.Node{node("a", 2, 65536)},
			vms: []structs.VM{vm("x", "a", 2, 1024, stopped())}, req: Request{VM: newVM}, wantErr: ErrNoCapacity, wantMsg: "vCPUs"},
		{name: "the VM itself is not counted", nodes: []structs.Node{node("a", 2, 1024)},
			vms: []structs.VM{vm("new", "a", 2, 1024)}, req: Request{VM: vm("new", "a", 2, 1024)}, want: "a"},

		// Anti-affinity.
		{name: "anti-affinity avoids the group's node", nodes: []structs.Node{node("a", 64, 65536), node("b", 4, 4096)},
			vms: []structs.VM{vm("x", "a", 1, 1024, group("db"))}, req: Request{VM: vm("new", "", 1, 1024, group("db"))}, want: "b"},
		{name: "anti-affinity with no other node", nodes: []structs.Node{node("a", 64, 65536)},
			vms: []structs.VM{vm("x", "a", 1, 1024, group("db"))}, req: Request{VM: vm("new", "", 1, 1024, group("db"))},
			wantErr: ErrNoCapacity, wantMsg: "1 anti-affinity group already there"},
		{name: "anti-affinity counts stopped VMs", nodes: []structs.Node{node("a", 64, 65536)},
			vms: []structs.VM{vm("x", "a", 1, 1024, group("db"), stopped())}, req: Request{VM: vm("new", "", 1, 1024, group("db"))},
			wantErr: ErrNoCapacity},
		{name: "other groups do not conflict", nodes: []structs.Node{node("a", 64, 65536)},
			vms: []structs.VM{vm("x", "a", 1, 1024, group("web"))}, req: Request{VM: vm("new", "", 1, 1024, group("db"))}, want: "a"},
		{name: "empty group never conflicts", nodes: []structs.Node{node("a", 64, 65536)},
			vms: []structs.VM{vm("x", "a", 1, 1024)}, req: Request{VM: vm("new", "", 1, 1024)}, want: "a"},
		{name: "a VM does not conflict with itself", nodes: []structs.Node{node("a", 64, 65536)},
			vms: []structs.VM{vm("new", "a", 1, 1024, group("db"))}, req: Request{VM: vm("new", "a", 1, 1024, group("db"))}, want: "a"},

		// Strategies. a: 16 GiB with 4 used, b: 8 GiB with 4 used; a 1 GiB VM leaves
		// a at 11/16 free and b at 3/8 free.
		{name: "spread takes the largest free fraction",
			nodes: []structs.Node{node("a", 16, 16384), node("b", 16, 8192)},
			vms:   []structs.VM{vm("x", "a", 1, 4096), vm("y", "b", 1, 4096)},
			req:   Request{VM: vm("new", "", 1, 1024)}, opt: Options{Strategy: Spread}, want: "a"},
		{name: "binpack takes the least free memory",
			nodes: []structs.Node{node("a", 16, 16384), node("b", 16, 8192)},
			vms:   []structs.VM{vm("x", "a", 1, 4096), vm("y", "b", 1, 4096)},
			req:   Request{VM: vm("new", "", 1, 1024)}, opt: Options{Strategy: Binpack}, want: "b"},
		{name: "spread uses fractions, not absolute memory",
			nodes: []structs.Node{node("big", 16, 65536), node("small", 16, 4096)},
			vms:   []structs.VM{vm("x", "big", 1, 49152)}, // big: 15/64 free after, small: 3/4
			req:   Request{VM: vm("new", "", 1, 1024)}, want: "small"},
		{name: "default strategy is spread",
			nodes: []structs.Node{node("a", 16, 16384), node("b", 16, 8192)},
			vms:   []structs.VM{vm("x", "a", 1, 4096), vm("y", "b", 1, 4096)},
			req:   Request{VM: vm("new", "", 1, 1024)}, want: "a"},
		{name: "binpack skips nodes the VM does not fit",
			nodes: []structs.Node{node("a", 16, 16384), node("b", 16, 8192)},
			vms:   []structs.VM{vm("x", "a", 1, 4096), vm("y", "b", 1, 7680)},
			req:   Request{VM: vm("new", "", 1, 1024)}, opt: Options{Strategy: Binpack}, want: "a"},

		// Tie-breaks.
		{name: "memory tie broken by free vCPU fraction",
			nodes: []structs.Node{node("a", 8, 8192), node("b", 8, 8192)},
			vms:   []structs.VM{vm("x", "a", 4, 0)},
			req:   Request{VM: newVM}, want: "b"},
		{name: "binpack memory tie broken by free vCPU fraction",
			nodes: []structs.Node{node("a", 8, 8192), node("b", 8, 8192)},
			vms:   []structs.VM{vm("x", "a", 4, 0)},
			req:   Request{VM: newVM}, opt: Options{Strategy: Binpack}, want: "b"},
		{name: "full tie broken by name",
			nodes: []structs.Node{node("id-1", 8, 8192, named("zeta")), node("id-2", 8, 8192, named("alpha"))},
			req:   Request{VM: newVM}, want: "id-2"},
		{name: "same name broken by id",
			nodes: []structs.Node{node("id-2", 8, 8192, named("same")), node("id-1", 8, 8192, named("same"))},
			req:   Request{VM: newVM}, want: "id-1"},

		// Exclude.
		{name: "excluded node is never used", nodes: []structs.Node{node("a", 64, 65536), node("b", 4, 4096)},
			req: Request{VM: newVM, Exclude: []string{"a"}}, want: "b"},
		{name: "everything excluded", nodes: []structs.Node{node("a", 64, 65536), node("b", 4, 4096)},
			req: Request{VM: newVM, Exclude: []string{"b", "a"}}, wantErr: ErrNoCapacity, wantMsg: "2 nodes rejected: 2 excluded"},
		{name: "excluding an unknown id is harmless", nodes: []structs.Node{node("a", 4, 4096)},
			req: Request{VM: newVM, Exclude: []string{"zzz"}}, want: "a"},

		// Invalid input.
		{name: "unknown strategy", nodes: []structs.Node{node("a", 4, 4096)}, req: Request{VM: newVM},
			opt: Options{Strategy: "random"}, wantErr: structs.ErrInvalid, wantMsg: `"random"`},
		{name: "negative overcommit", nodes: []structs.Node{node("a", 4, 4096)}, req: Request{VM: newVM},
			opt: Options{CPUOvercommit: -1}, wantErr: structs.ErrInvalid, wantMsg: "cpu_overcommit"},
		{name: "NaN overcommit", nodes: []structs.Node{node("a", 4, 4096)}, req: Request{VM: newVM},
			opt: Options{CPUOvercommit: math.NaN()}, wantErr: structs.ErrInvalid},
		{name: "negative memory", nodes: []structs.Node{node("a", 4, 4096)}, req: Request{VM: vm("new", "", 1, -1)},
			wantErr: structs.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Place(tc.nodes, tc.vms, tc.req, tc.opt)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Place = %q, %v; want error %v", got, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("Place error %q does not contain %q", err, tc.wantMsg)
				}
				if got != "" {
					t.Fatalf("Place returned node %q with an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Place = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestPlaceAll(t *testing.T) {
	cases := []struct {
		name         string
		nodes        []structs.Node
		vms          []structs.VM
		reqs         []Request
		opt          Options
		want         map[string]string
		wantUnplaced []string
	}{
		{name: "each decision sees the previous ones",
			nodes: []structs.Node{node("a", 8, 4096), node("b", 8, 4096)},
			reqs:  []Request{{VM: vm("1", "", 1, 4096)}, {VM: vm("2", "", 1, 4096)}, {VM: vm("3", "", 1, 4096)}},
			want:  map[string]string{"1": "a", "2": "b"}, wantUnplaced: []string{"3"}},
		{name: "anti-affinity within the batch",
			nodes: []structs.Node{node("a", 8, 8192), node("b", 8, 8192)},
			reqs: []Request{{VM: vm("1", "", 1, 1024, group("db"))}, {VM: vm("2", "", 1, 1024, group("db"))},
				{VM: vm("3", "", 1, 1024, group("db"))}, {VM: vm("4", "", 1, 1024)}},
			want: map[string]string{"1": "a", "2": "b", "4": "a"}, wantUnplaced: []string{"3"}},
		{name: "spread alternates",
			nodes: []structs.Node{node("a", 8, 8192), node("b", 8, 8192)},
			reqs:  []Request{{VM: vm("1", "", 1, 1024)}, {VM: vm("2", "", 1, 1024)}, {VM: vm("3", "", 1, 1024)}, {VM: vm("4", "", 1, 1024)}},
			want:  map[string]string{"1": "a", "2": "b", "3": "a", "4": "b"}},
		{name: "binpack fills one node first",
			nodes: []structs.Node{node("a", 8, 2048), node("b", 8, 2048)},
			reqs:  []Request{{VM: vm("1", "", 1, 1024)}, {VM: vm("2", "", 1, 1024)}, {VM: vm("3", "", 1, 1024)}},
			opt:   Options{Strategy: Binpack},
			want:  map[string]string{"1": "a", "2": "a", "3": "b"}},
		{name: "evacuate: requested VMs leave their excluded node",
			nodes: []structs.Node{node("src", 8, 8192), node("a", 8, 4096), node("b", 8, 4096)},
			vms: []structs.VM{vm("1", "src", 1, 3072), vm("2", "src", 1, 3072), vm("3", "src", 1, 2048),
				vm("other", "a", 1, 1024)},
			reqs: []Request{
				{VM: vm("1", "src", 1, 3072), Exclude: []string{"src"}},
				{VM: vm("2", "src", 1, 3072), Exclude: []string{"src"}},
				{VM: vm("3", "src", 1, 2048), Exclude: []string{"src"}},
			},
			// 1 → b (a has 1024 used); 2 → a (3072 free, b has 1024); 3 fits nowhere.
			want: map[string]string{"1": "b", "2": "a"}, wantUnplaced: []string{"3"}},
		{name: "requested VMs release their old place",
			nodes: []structs.Node{node("a", 8, 4096)},
			vms:   []structs.VM{vm("1", "a", 1, 4096), vm("2", "a", 1, 0)},
			reqs:  []Request{{VM: vm("2", "a", 1, 2048)}, {VM: vm("1", "a", 1, 2048)}},
			want:  map[string]string{"1": "a", "2": "a"}},
		{name: "duplicate request placed once",
			nodes: []structs.Node{node("a", 8, 4096)},
			reqs:  []Request{{VM: vm("1", "", 1, 3072)}, {VM: vm("1", "", 1, 3072)}},
			want:  map[string]string{"1": "a"}},
		{name: "unplaced keep request order",
			nodes: []structs.Node{node("a", 1, 1024)},
			reqs:  []Request{{VM: vm("z", "", 2, 1)}, {VM: vm("a", "", 2, 1)}, {VM: vm("m", "", 2, 1)}},
			want:  map[string]string{}, wantUnplaced: []string{"z", "a", "m"}},
		{name: "no nodes",
			reqs: []Request{{VM: vm("1", "", 1, 1)}},
			want: map[string]string{}, wantUnplaced: []string{"1"}},
		{name: "invalid options place nothing",
			nodes: []structs.Node{node("a", 8, 8192)},
			reqs:  []Request{{VM: vm("1", "", 1, 1)}, {VM: vm("2", "", 1, 1)}},
			opt:   Options{Strategy: "nope"},
			want:  map[string]string{}, wantUnplaced: []string{"1", "2"}},
		{name: "no requests",
			nodes: []structs.Node{node("a", 8, 8192)},
			want:  map[string]string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, unplaced := PlaceAll(tc.nodes, tc.vms, tc.reqs, tc.opt)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("placed = %v, want %v", got, tc.want)
			}
			if !slices.Equal(unplaced, tc.wantUnplaced) {
				t.Errorf("unplaced = %v, want %v", unplaced, tc.wantUnplaced)
			}
		})
	}
}

func TestParseStrategy(t *testing.T) {
	cases := []struct {
		in      string
		want    Strategy
		wantErr bool
	}{
		{"", Spread, false},
		{"spread", Spread, false},
		{"binpack", Binpack, false},
		{"Spread", "", true},
		{"bin-pack", "", true},
		{" spread", "", true},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			got, err := ParseStrategy(tc.in)
			if tc.wantErr {
				if err == nil || !errors.Is(err, structs.ErrInvalid) {
					t.Fatalf("ParseStrategy(%q) = %q, %v; want an structs.ErrInvalid error", tc.in, got, err)
				}
				for _, s := range []string{fmt.Sprintf("%q", tc.in), "spread", "binpack"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not name %s", err, s)
					}
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseStrategy(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

// randomCluster builds a reproducible fleet with a mix of states, capacities, groups and
// duplicate names, so ties and every rejection reason occur.
func randomCluster(seed uint64, nNodes, nVMs int) ([]structs.Node, []structs.VM) {
	r := rand.New(rand.NewPCG(seed, 1))
	mgmts := []string{structs.NodeEnabled, structs.NodeEnabled, structs.NodeEnabled, structs.NodeDisabled, structs.NodeDrained}
	mons := []string{structs.MonitorNormal, structs.MonitorNormal, structs.MonitorNormal, structs.MonitorUnreachable, structs.MonitorError}
	nodes := make([]structs.Node, nNodes)
	for i := range nodes {
		nodes[i] = node(fmt.Sprintf("node-%05d", i), 8*(1+r.IntN(8)), 16384*(1+r.IntN(8)),
			mgmt(mgmts[r.IntN(len(mgmts))]), mon(mons[r.IntN(len(mons))]), named(fmt.Sprintf("hv%d", r.IntN(nNodes/2+1))))
	}
	vms := make([]structs.VM, nVMs)
	for i := range vms {
		v := vm(fmt.Sprintf("vm-%06d", i), nodes[r.IntN(nNodes)].ID, 1+r.IntN(4), 512*(1+r.IntN(8)))
		if r.IntN(4) == 0 {
			v.NodeID = ""
		}
		if r.IntN(3) == 0 {
			v.Spec.AntiAffinity = fmt.Sprintf("g%d", r.IntN(10))
		}
		if r.IntN(5) == 0 {
			v.DesiredState = structs.DesiredStopped
		}
		vms[i] = v
	}
	return nodes, vms
}

func TestPlaceDeterministicUnderShuffle(t *testing.T) {
	nodes, vms := randomCluster(42, 60, 400)
	reqs := []Request{
		{VM: vm("new-1", "", 2, 2048)},
		{VM: vm("new-2", "", 4, 8192, group("g1"))},
		{VM: vms[0], Exclude: []string{vms[0].NodeID}},
		{VM: vm("new-3", "", 1, 512), Exclude: []string{nodes[0].ID, nodes[1].ID}},
	}
	r := rand.New(rand.NewPCG(7, 7))
	for _, strategy := range []Strategy{Spread, Binpack} {
		for _, oc := range []float64{0, 1.5} {
			opt := Options{Strategy: strategy, CPUOvercommit: oc}
			want := make([]string, len(reqs))
			for i, req := range reqs {
				id, err := Place(nodes, vms, req, opt)
				if err != nil {
					t.Fatalf("%+v: Place(%s): %v", opt, req.VM.ID, err)
				}
				want[i] = id
			}
			wantAll, wantUnplaced := PlaceAll(nodes, vms, reqs, opt)
			for round := 0; round < 20; round++ {
				sn, sv := slices.Clone(nodes), slices.Clone(vms)
				r.Shuffle(len(sn), func(i, j int) { sn[i], sn[j] = sn[j], sn[i] })
				r.Shuffle(len(sv), func(i, j int) { sv[i], sv[j] = sv[j], sv[i] })
				for i, req := range reqs {
					if got, err := Place(sn, sv, req, opt); err != nil || got != want[i] {
						t.Fatalf("%+v round %d: Place(%s) = %q, %v; unshuffled input gave %q", opt, round, req.VM.ID, got, err, want[i])
					}
				}
				gotAll, gotUnplaced := PlaceAll(sn, sv, reqs, opt)
				if fmt.Sprint(gotAll) != fmt.Sprint(wantAll) || !slices.Equal(gotUnplaced, wantUnplaced) {
					t.Fatalf("%+v round %d: PlaceAll = %v %v; unshuffled input gave %v %v", opt, round, gotAll, gotUnplaced, wantAll, wantUnplaced)
				}
			}
		}
	}
}

// TestPlaceAgreesWithBruteForce checks Place against a naive restatement of the rules on
// random fleets: the chosen node is eligible and no eligible node scores better.
func TestPlaceAgreesWithBruteForce(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		nodes, vms := randomCluster(seed, 12, 150)
		for _, strategy := range []Strategy{Spread, Binpack} {
			req := Request{VM: vm("new", "", 1+int(seed%4), 512*(1+int(seed%6)), group(fmt.Sprintf("g%d", seed%10)))}
			got, err := Place(nodes, vms, req, Options{Strategy: strategy})

			type score struct {
				node    structs.Node
				memFrac float64
				memLeft int
				cpuFrac float64
			}
			var eligible []score
			for _, n := range nodes {
				if n.ManagementState != structs.NodeEnabled || n.MonitorState != structs.MonitorNormal {
					continue
				}
				cpu, mem, clash := 0, 0, false
				for _, v := range vms {
					if v.NodeID == n.ID {
						cpu += v.Spec.VCPUs
						mem += v.Spec.MemoryMiB
						clash = clash || v.Spec.AntiAffinity == req.VM.Spec.AntiAffinity
					}
				}
				cpuLeft, memLeft := n.VCPUs-cpu-req.VM.Spec.VCPUs, n.MemoryMiB-mem-req.VM.Spec.MemoryMiB
				if clash || cpuLeft < 0 || memLeft < 0 {
					continue
				}
				eligible = append(eligible, score{n, float64(memLeft) / float64(n.MemoryMiB), memLeft, float64(cpuLeft) / float64(n.VCPUs)})
			}
			if len(eligible) == 0 {
				if !errors.Is(err, ErrNoCapacity) {
					t.Fatalf("seed %d %s: no node is eligible but Place = %q, %v", seed, strategy, got, err)
				}
				continue
			}
			slices.SortFunc(eligible, func(a, b score) int {
				if strategy == Binpack && a.memLeft != b.memLeft {
					return a.memLeft - b.memLeft
				}
				if strategy == Spread && a.memFrac != b.memFrac {
					if a.memFrac > b.memFrac {
						return -1
					}
					return 1
				}
				if a.cpuFrac != b.cpuFrac {
					if a.cpuFrac > b.cpuFrac {
						return -1
					}
					return 1
				}
				if c := strings.Compare(a.node.Name, b.node.Name); c != 0 {
					return c
				}
				return strings.Compare(a.node.ID, b.node.ID)
			})
			if err != nil || got != eligible[0].node.ID {
				t.Fatalf("seed %d %s: Place = %q, %v; brute force picks %q of %d eligible", seed, strategy, got, err, eligible[0].node.ID, len(eligible))
			}
		}
	}
}

func BenchmarkPlace(b *testing.B) {
	nodes, vms := randomCluster(1, 5000, 50000)
	req := Request{VM: vm("new", "", 2, 2048, group("g3"))}
	for _, strategy := range []Strategy{Spread, Binpack} {
		b.Run(string(strategy), func(b *testing.B) {
			opt := Options{Strategy: strategy, CPUOvercommit: 2}
			for b.Loop() {
				if _, err := Place(nodes, vms, req, opt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
