package scheduler

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/chime-ha/chime/chime/structs"
)

// Strategy chooses among the eligible nodes.
type Strategy string

const (
	// Spread picks the node left with the largest fraction of free memory, which
	// spreads load and leaves room on every node for rebuilds.
	Spread Strategy = "spread"
	// Binpack picks the node left with the least free memory, which keeps whole
	// nodes empty (for maintenance or power saving).
	Binpack Strategy = "binpack"
)

// ParseStrategy reads a strategy name as given in flags or configuration. The empty
// string means the default, Spread.
func ParseStrategy(s string) (Strategy, error) {
	switch Strategy(s) {
	case "", Spread:
		return Spread, nil
	case Binpack:
		return Binpack, nil
	}
	return "", structs.Invalid("strategy", "%q is not a placement strategy; want one of %s, %s", s, Spread, Binpack)
}

// Options tune placement. The zero value is valid: spread, no CPU overcommit.
type Options struct {
	Strategy Strategy // "" means Spread
	// CPUOvercommit is how many vCPUs may be placed per vCPU of a node's capacity;
	// 0 means 1.0. Memory is never overcommitted.
	CPUOvercommit float64
}

// Validate reports options Place would refuse.
func (o Options) Validate() error {
	if _, err := ParseStrategy(string(o.Strategy)); err != nil {
		return err
	}
	if math.IsNaN(o.CPUOvercommit) || math.IsInf(o.CPUOvercommit, 0) || o.CPUOvercommit < 0 {
		return structs.Invalid("cpu_overcommit", "must be a finite number >= 0 (0 means 1.0), got %v", o.CPUOvercommit)
	}
	return nil
}

// ErrNoCapacity is returned (wrapped, with the reasons each node was rejected) when no
// node can take the VM.
var ErrNoCapacity = errors.New("no node fits")

// Request asks for a node for one VM.
type Request struct {
	VM      structs.VM // uses ID, Spec.VCPUs, Spec.MemoryMiB and Spec.AntiAffinity
	Exclude []string   // node ids never to use, e.g. the node being evacuated
}

// Place picks a node for req.VM among nodes, given every VM already placed (vms). The VM
// itself is not counted where it currently sits, so its own node is a candidate unless
// excluded. The answer depends only on the input values, not on their order.
func Place(nodes []structs.Node, vms []structs.VM, req Request, opt Options) (string, error) {
	p, err := newPlacer(nodes, vms, map[string]bool{req.VM.ID: true}, opt)
	if err != nil {
		return "", err
	}
	return p.place(req)
}

// PlaceAll places reqs in order; each decision sees the resources taken by the previous
// ones. Every requested VM is first removed from where it currently sits (they are being
// moved). It returns vmID → nodeID for the VMs placed and, in request order, the ids of
// those that did not fit. A VM requested twice is placed once. Invalid options place nothing.
func PlaceAll(nodes []structs.Node, vms []structs.VM, reqs []Request, opt Options) (map[string]string, []string) {
	moving := make(map[string]bool, len(reqs))
	for _, r := range reqs {
		moving[r.VM.ID] = true
	}
	p, err := newPlacer(nodes, vms, moving, opt)
	return placeEach(p, err, reqs)
}

// PlaceOn is Place over a usage view instead of the VMs: used maps a node
// id to what the VMs placed on it take (fsm/view keeps it), with req.VM
// already left out where it sits. The answer is Place's on the same
// state; the cost is O(nodes), whatever the number of VMs.
func PlaceOn(nodes []structs.Node, used map[string]structs.NodeUsage, req Request, opt Options) (string, error) {
	p, err := newPlacerOn(nodes, used, opt)
	if err != nil {
		return "", err
	}
	return p.place(req)
}

// PlaceAllOn is PlaceAll over a usage view, with every requested VM
// already left out where it sits (see PlaceOn).
func PlaceAllOn(nodes []structs.Node, used map[string]structs.NodeUsage, reqs []Request, opt Options) (map[string]string, []string) {
	p, err := newPlacerOn(nodes, used, opt)
	return placeEach(p, err, reqs)
}

// placeEach places reqs one after the other on p, each placement reserving
// its room for the next; a VM requested twice is placed once. With err (the
// placer could not be built) nothing is placed.
func placeEach(p *placer, err error, reqs []Request) (map[string]string, []string) {
	placed := make(map[string]string, len(reqs))
	var unplaced []string
	if err != nil {
		for _, r := range reqs {
			unplaced = append(unplaced, r.VM.ID)
		}
		return placed, unplaced
	}
	done := make(map[string]bool, len(reqs))
	for _, r := range reqs {
		if done[r.VM.ID] {
			continue
		}
		done[r.VM.ID] = true
		id, err := p.place(r)
		if err != nil {
			unplaced = append(unplaced, r.VM.ID)
			continue
		}
		placed[r.VM.ID] = id
		p.reserve(id, r.VM)
	}
	return placed, unplaced
}

// CPUCapacity is a node's vCPU capacity under opt's overcommit, in whole
// vCPUs: what Place compares a node's usage with (and what a create's
// capacity compare-and-set, fsm.Fit, carries).
func CPUCapacity(n *structs.Node, opt Options) int64 {
	o := opt.CPUOvercommit
	if o == 0 {
		o = 1
	}
	return int64(math.Floor(float64(n.VCPUs)*o + 1e-9))
}

func newPlacerOn(nodes []structs.Node, used map[string]structs.NodeUsage, opt Options) (*placer, error) {
	p, err := newPlacer(nodes, nil, nil, opt)
	if err != nil {
		return nil, err
	}
	for id, u := range used {
		c := &usage{vcpus: u.VCPUs, memoryMiB: u.MemoryMiB}
		if len(u.Groups) > 0 {
			c.groups = make(map[string]int, len(u.Groups))
			for g, k := range u.Groups {
				c.groups[g] = k
			}
		}
		p.used[id] = c
	}
	return p, nil
}

// usage is what the VMs placed on one node take.
type usage struct {
	vcpus     int64
	memoryMiB int64
	groups    map[string]int // anti-affinity group → VMs of it on the node
}

// placer holds the input of one Place or PlaceAll call, indexed once.
type placer struct {
	nodes    []structs.Node
	used     map[string]*usage // node id → usage
	strategy Strategy
	overcomm float64 // > 0
}

// newPlacer indexes the usage of every placed VM except those in skip.
func newPlacer(nodes []structs.Node, vms []structs.VM, skip map[string]bool, opt Options) (*placer, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	p := &placer{
		nodes:    nodes,
		used:     make(map[string]*usage, len(nodes)),
		strategy: Spread,
		overcomm: 1,
	}
	if opt.Strategy != "" {
		p.strategy = opt.Strategy
	}
	if opt.CPUOvercommit != 0 {
		p.overcomm = opt.CPUOvercommit
	}
	for i := range vms {
		if vms[i].NodeID != "" && !skip[vms[i].ID] {
			p.reserve(vms[i].NodeID, vms[i])
		}
	}
	return p, nil
}

func (p *placer) reserve(nodeID string, vm structs.VM) {
	u := p.used[nodeID]
	if u == nil {
		u = &usage{}
		p.used[nodeID] = u
	}
	u.vcpus += int64(vm.Spec.VCPUs)
	u.memoryMiB += int64(vm.Spec.MemoryMiB)
	if g := vm.Spec.AntiAffinity; g != "" {
		if u.groups == nil {
			u.groups = map[string]int{}
		}
		u.groups[g]++
	}
}

// candidate is an eligible node with what it would have left after the placement.
type candidate struct {
	node                *structs.Node
	cpuCap, cpuFree     int64 // effective vCPU capacity (overcommitted) and free after placement
	memCap, memFreeLeft int64 // memory capacity and free after placement, MiB
}

// Rejection reasons, counted per node in the ErrNoCapacity message.
const (
	rejectExcluded     = "excluded"
	rejectAntiAffinity = "anti-affinity group already there"
	rejectCPU          = "not enough free vCPUs"
	rejectMemory       = "not enough free memory"
)

func (p *placer) place(req Request) (string, error) {
	vm := req.VM
	if vm.Spec.VCPUs < 0 || vm.Spec.MemoryMiB < 0 {
		return "", structs.Invalid("spec", "vm %s asks for %d vCPUs and %d MiB; want >= 0", vm.ID, vm.Spec.VCPUs, vm.Spec.MemoryMiB)
	}
	excluded := make(map[string]bool, len(req.Exclude))
	for _, id := range req.Exclude {
		excluded[id] = true
	}
	rejected := map[string]int{}
	var best *candidate
	for i := range p.nodes {
		n := &p.nodes[i]
		c, why := p.fit(n, vm, excluded)
		if why != "" {
			rejected[why]++
			continue
		}
		if best == nil || p.better(&c, best) {
			best = &c
		}
	}
	if best == nil {
		return "", fmt.Errorf("%w: vm %s (%s, %d vCPUs, %d MiB): %s", ErrNoCapacity, vm.ID, vm.Name,
			vm.Spec.VCPUs, vm.Spec.MemoryMiB, describeRejections(len(p.nodes), rejected))
	}
	return best.node.ID, nil
}

// fit returns the node as a candidate, or why it cannot take vm.
func (p *placer) fit(n *structs.Node, vm structs.VM, excluded map[string]bool) (candidate, string) {
	if excluded[n.ID] {
		return candidate{}, rejectExcluded
	}
	if n.ManagementState != structs.NodeEnabled {
		return candidate{}, "management_state " + orNone(n.ManagementState)
	}
	if n.MonitorState != structs.MonitorNormal {
		return candidate{}, "monitor_state " + orNone(n.MonitorState)
	}
	u := p.used[n.ID]
	if u == nil {
		u = &usage{}
	}
	return p.fitUsage(n, u, vm, excluded)
}

// fitUsage is fit with the node's usage u.
func (p *placer) fitUsage(n *structs.Node, u *usage, vm structs.VM, excluded map[string]bool) (candidate, string) {
	if excluded[n.ID] {
		return candidate{}, rejectExcluded
	}
	if n.ManagementState != structs.NodeEnabled {
		return candidate{}, "management_state " + orNone(n.ManagementState)
	}
	if n.MonitorState != structs.MonitorNormal {
		return candidate{}, "monitor_state " + orNone(n.MonitorState)
	}
	if g := vm.Spec.AntiAffinity; g != "" && u.groups[g] > 0 {
		return candidate{}, rejectAntiAffinity
	}
	// Whole vCPUs only: 3 vCPUs at 1.5 overcommit hold 4, not 4.5. The epsilon keeps
	// products such as 10 × 1.1 from losing a vCPU to binary rounding.
	cpuCap := CPUCapacity(n, Options{CPUOvercommit: p.overcomm})
	c := candidate{
		node:        n,
		cpuCap:      cpuCap,
		cpuFree:     cpuCap - u.vcpus - int64(vm.Spec.VCPUs),
		memCap:      int64(n.MemoryMiB),
		memFreeLeft: int64(n.MemoryMiB) - u.memoryMiB - int64(vm.Spec.MemoryMiB),
	}
	if c.cpuFree < 0 {
		return candidate{}, rejectCPU
	}
	if c.memFreeLeft < 0 {
		return candidate{}, rejectMemory
	}
	return c, ""
}

// better reports whether a beats b under the strategy. It is a strict total order on
// distinct (name, id) pairs, which makes the choice independent of input order.
func (p *placer) better(a, b *candidate) bool {
	if p.strategy == Binpack {
		if a.memFreeLeft != b.memFreeLeft {
			return a.memFreeLeft < b.memFreeLeft
		}
	} else if c := compareFractions(a.memFreeLeft, a.memCap, b.memFreeLeft, b.memCap); c != 0 {
		return c > 0
	}
	if c := compareFractions(a.cpuFree, a.cpuCap, b.cpuFree, b.cpuCap); c != 0 {
		return c > 0
	}
	if a.node.Name != b.node.Name {
		return a.node.Name < b.node.Name
	}
	return a.node.ID < b.node.ID
}

// compareFractions compares an/ad with bn/bd exactly (integer cross products; the
// values are MiB and vCPUs, far from overflowing). A zero denominator counts as 0.
func compareFractions(an, ad, bn, bd int64) int {
	if ad == 0 {
		an, ad = 0, 1
	}
	if bd == 0 {
		bn, bd = 0, 1
	}
	l, r := an*bd, bn*ad
	switch {
	case l > r:
		return 1
	case l < r:
		return -1
	}
	return 0
}

func orNone(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// describeRejections renders "3 nodes: 2 not enough free memory, 1 excluded", reasons
// sorted by count then name so the message is stable.
func describeRejections(total int, rejected map[string]int) string {
	if total == 0 {
		return "no nodes"
	}
	reasons := make([]string, 0, len(rejected))
	for r := range rejected {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if rejected[reasons[i]] != rejected[reasons[j]] {
			return rejected[reasons[i]] > rejected[reasons[j]]
		}
		return reasons[i] < reasons[j]
	})
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%d %s", rejected[r], r)
	}
	noun := "nodes"
	if total == 1 {
		noun = "node"
	}
	return fmt.Sprintf("%d %s rejected: %s", total, noun, strings.Join(parts, ", "))
}

// Walk visits the nodes a VM may be placed on from an index of their free
// capacity (fsm/view.View.Ranked keeps one): class by class, each class's
// nodes (one node shape: memory and vCPUs) best first under the strategy
// (binpack, else spread), bin-packing from the first node with memMiB
// free. visit returns whether to go on with the class. It answers false
// when it cannot walk for this VM (the VM is placed: it would count where
// it sits).
type Walk func(binpack bool, memMiB int64, visit func(n *structs.Node, u *structs.NodeUsage) bool) bool

// PlaceRanked is PlaceOn over an index of free capacity: the same answer
// on the same state (nodes of one shape rank alike whatever the VM's size,
// so the first node of a class that can take the VM is the class's best,
// and the classes' bests are compared as PlaceOn compares every node),
// visiting the nodes it must skip (excluded, anti-affinity, vCPUs) and one
// per class instead of every node. ok is false when no node fits or the
// index cannot answer: then ask PlaceOn, which also says why.
func PlaceRanked(walk Walk, req Request, opt Options) (nodeID string, cpuCap int64, ok bool) {
	p, err := newPlacer(nil, nil, nil, opt)
	if err != nil {
		return "", 0, false
	}
	best, _, walked := p.rankedBest(walk, req, nil)
	if !walked || best == nil {
		return "", 0, false
	}
	return best.node.ID, best.cpuCap, true
}

// PlaceAllRanked is PlaceAllOn over an index of free capacity: the
// requests in order, each seeing the ones before it, with walk(req) the
// index's walk for that request. The nodes chosen by earlier requests are
// scored on the side with what those took (the index does not hold it);
// the others come from the walk. The VMs being placed must not count
// where they sit (each walk answers false otherwise): then ok is false
// and nothing is decided (use PlaceAllOn).
func PlaceAllRanked(walk func(Request) Walk, reqs []Request, opt Options) (placed map[string]string, unplaced []string, ok bool) {
	p, err := newPlacer(nil, nil, nil, opt)
	if err != nil {
		return nil, nil, false
	}
	taken := map[string]*takenNode{}
	placed = make(map[string]string, len(reqs))
	done := make(map[string]bool, len(reqs))
	for _, r := range reqs {
		if done[r.VM.ID] {
			continue
		}
		done[r.VM.ID] = true
		best, u, walked := p.rankedBest(walk(r), r, taken)
		if !walked {
			return nil, nil, false
		}
		if best == nil {
			unplaced = append(unplaced, r.VM.ID)
			continue
		}
		id := best.node.ID
		t := taken[id]
		if t == nil {
			t = &takenNode{node: *best.node, used: u}
			taken[id] = t
		}
		t.used.vcpus += int64(r.VM.Spec.VCPUs)
		t.used.memoryMiB += int64(r.VM.Spec.MemoryMiB)
		if g := r.VM.Spec.AntiAffinity; g != "" {
			if t.used.groups == nil {
				t.used.groups = map[string]int{}
			}
			t.used.groups[g]++
		}
		placed[r.VM.ID] = id
	}
	return placed, unplaced, true
}

// takenNode is a node an earlier decision of PlaceAllRanked chose, with
// its usage including those decisions.
type takenNode struct {
	node structs.Node
	used usage
}

// rankedBest is the best node for req: the walk's (skipping the nodes in
// taken) against taken's, scored with what they hold now. It returns the
// candidate, a copy of the chosen node's usage as the walk saw it (for a
// node of taken: its usage there), and whether the walk could answer.
func (p *placer) rankedBest(walk Walk, req Request, taken map[string]*takenNode) (*candidate, usage, bool) {
	vm := req.VM
	if vm.Spec.VCPUs < 0 || vm.Spec.MemoryMiB < 0 {
		return nil, usage{}, false
	}
	excluded := make(map[string]bool, len(req.Exclude))
	for _, id := range req.Exclude {
		excluded[id] = true
	}
	var best *candidate
	var bestUsed usage
	walked := walk(p.strategy == Binpack, int64(vm.Spec.MemoryMiB), func(n *structs.Node, nu *structs.NodeUsage) bool {
		if taken[n.ID] != nil {
			return true // scored below, with what this decision's earlier placements took
		}
		u := usage{}
		if nu != nil {
			u = usage{vcpus: nu.VCPUs, memoryMiB: nu.MemoryMiB, groups: nu.Groups}
		}
		if int64(n.MemoryMiB)-u.memoryMiB-int64(vm.Spec.MemoryMiB) < 0 {
			// Spread: the class's next nodes have less free memory.
			// Bin-packing starts where the memory fits: a node too
			// full is out of order, skip it.
			return p.strategy == Binpack
		}
		c, why := p.fitUsage(n, &u, vm, excluded)
		if why != "" {
			return true
		}
		if best == nil || p.better(&c, best) {
			best = &c
			bestUsed = usage{vcpus: u.vcpus, memoryMiB: u.memoryMiB}
			if len(u.groups) > 0 {
				bestUsed.groups = maps.Clone(u.groups) // the walk's map is the view's
			}
		}
		return false // the class's best
	})
	if !walked {
		return nil, usage{}, false
	}
	for _, id := range slices.Sorted(maps.Keys(taken)) {
		t := taken[id]
		c, why := p.fitUsage(&t.node, &t.used, vm, excluded)
		if why == "" && (best == nil || p.better(&c, best)) {
			best, bestUsed = &c, t.used
		}
	}
	return best, bestUsed, true
}
