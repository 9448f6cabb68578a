package scheduler

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/chime-ha/chime/chime/structs"
)

// RuleTolerateFailures names the admission rule in refusals and alarms: the
// cluster must be able to restart every protected VM after the loss of any
// Tolerate nodes (server flag --ha-tolerate-failures).
const RuleTolerateFailures = "ha-tolerate-failures"

// MaxFailureSets bounds how many failure sets Reserve tries one by one. Up
// to it every set of Tolerate nodes is tried (exact); beyond it only the
// heaviest sets under four rankings are (see Reserve).
const MaxFailureSets = 1000

// Protected reports whether automatic HA must restart the VM elsewhere
// when its node fails: an ha VM, placed, desired running.
func Protected(v *structs.VM) bool {
	return v.Spec.HA && v.DesiredState == structs.DesiredRunning && v.NodeID != ""
}

// RestartOrder sorts VMs in the order a failover places them: by restart
// priority (structs.PriorityRank: high, medium, low), then name, then id.
// It is the recovery duty's order (chime/server/recovery sorts each
// node's VMs with it), so the plan is the one carried out.
func RestartOrder(vms []structs.VM) {
	slices.SortFunc(vms, func(a, b structs.VM) int {
		return cmp.Or(cmp.Compare(structs.PriorityRank(a.Spec.Priority), structs.PriorityRank(b.Spec.Priority)),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
}

// Reserve checks the HA reservation over the current nodes and VMs: for
// every set of tolerate nodes among those that are not unreachable (up to
// MaxFailureSets sets; beyond that the tolerate nodes heaviest by each of
// protected memory, protected vCPUs, memory capacity and vCPU capacity),
// it takes those nodes and the already unreachable ones as failed and
// places every protected VM they hold on the others with PlaceAll, in
// RestartOrder: exactly what a failover would ask the scheduler. The
// reservation holds when every set places every VM. tolerate <= 0 checks
// only the nodes already unreachable. The answer depends only on the
// input values.
func Reserve(nodes []structs.Node, vms []structs.VM, tolerate int, opt Options) structs.HAReservation {
	var protected []structs.VM
	for i := range vms {
		if Protected(&vms[i]) {
			protected = append(protected, vms[i])
		}
	}
	return ReserveOn(nodes, UsageOf(vms), protected, tolerate, opt)
}

// UsageOf is what the placed VMs take on each node: the usage view
// PlaceOn and ReserveOn read, computed from every VM.
func UsageOf(vms []structs.VM) map[string]structs.NodeUsage {
	used := map[string]structs.NodeUsage{}
	for _, v := range vms {
		if v.NodeID == "" {
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
	return used
}

// ReserveOn is Reserve over a usage view (what the placed VMs take on
// each node, see PlaceOn) and the protected VMs alone: its cost does not
// grow with the VMs that are not protected.
func ReserveOn(nodes []structs.Node, used map[string]structs.NodeUsage, protected []structs.VM, tolerate int, opt Options) structs.HAReservation {
	if tolerate < 0 {
		tolerate = 0
	}
	r := structs.HAReservation{Tolerate: tolerate, Rule: RuleTolerateFailures}
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b structs.Node) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	overcomm := opt.CPUOvercommit
	if overcomm == 0 || math.IsNaN(overcomm) || overcomm < 0 {
		overcomm = 1
	}
	known := map[string]bool{}
	var failed, candidates []string
	share := map[string]*structs.NodeReserve{}
	for i := range nodes {
		n := &nodes[i]
		known[n.ID] = true
		nr := &structs.NodeReserve{NodeID: n.ID, Name: n.Name,
			Receiver:  n.ManagementState == structs.NodeEnabled && n.MonitorState == structs.MonitorNormal,
			VCPUs:     int64(math.Floor(float64(n.VCPUs)*overcomm + 1e-9)),
			MemoryMiB: int64(n.MemoryMiB)}
		share[n.ID] = nr
		if n.MonitorState == structs.MonitorUnreachable {
			failed = append(failed, n.ID)
		} else {
			candidates = append(candidates, n.ID)
		}
	}
	byNode := map[string][]structs.VM{}
	var orphans []structs.VM // protected VMs placed on a node that is gone
	for id, u := range used {
		if nr := share[id]; nr != nil {
			nr.UsedVCPUs += u.VCPUs
			nr.UsedMemoryMiB += u.MemoryMiB
		}
	}
	for _, v := range protected {
		if !Protected(&v) {
			continue
		}
		r.ProtectedVMs++
		if !known[v.NodeID] {
			orphans = append(orphans, v)
			continue
		}
		nr := share[v.NodeID]
		nr.HAVCPUs += int64(v.Spec.VCPUs)
		nr.HAMemoryMiB += int64(v.Spec.MemoryMiB)
		byNode[v.NodeID] = append(byNode[v.NodeID], v)
	}
	r.Failed = failed

	size := min(tolerate, len(candidates))
	sets, exhaustive := failureSets(candidates, size, share)
	r.Exhaustive = exhaustive
	fo := newFailover(nodes, used, byNode, orphans, opt)
	worstUnplaced, worstFree := -1, int64(math.MaxInt64)
	for _, set := range sets {
		down := append(slices.Clone(failed), set...)
		_, unplaced, free, recv := fo.after(down)
		r.SetsTried++
		for nodeID, u := range recv {
			nr := share[nodeID]
			nr.ReservedVCPUs = max(nr.ReservedVCPUs, u.vcpus)
			nr.ReservedMemoryMiB = max(nr.ReservedMemoryMiB, u.memoryMiB)
		}
		if len(unplaced) > worstUnplaced || (len(unplaced) == worstUnplaced && len(unplaced) == 0 && free < worstFree) {
			worstUnplaced, worstFree = len(unplaced), free
			r.WorstCase, r.Unplaced = set, unplaced
		}
	}
	r.OK = worstUnplaced <= 0
	for _, n := range nodes {
		nr := share[n.ID]
		if nr.Receiver {
			nr.SpareVCPUs = max(0, nr.VCPUs-nr.UsedVCPUs-nr.ReservedVCPUs)
			nr.SpareMemoryMiB = max(0, nr.MemoryMiB-nr.UsedMemoryMiB-nr.ReservedMemoryMiB)
		}
		r.Nodes = append(r.Nodes, *nr)
	}
	r.Reason = reservationReason(r, share, tolerate, len(candidates))
	return r
}

// failover places the protected VMs of failed nodes over one indexing of
// the cluster: the usage of every placed VM is counted once (newPlacer),
// and each failure set works on a copy of it over the surviving nodes.
// That is PlaceAll's answer (a VM on a down node or on a node that is gone
// reserves nothing on a survivor either way) without re-reading every VM
// per set.
type failover struct {
	nodes   []structs.Node
	byNode  map[string][]structs.VM // protected VMs per node
	orphans []structs.VM            // protected VMs placed on a node that is gone
	base    *placer                 // nil: invalid options, nothing places
	memUsed map[string]int64        // memory the VMs placed on each node take
	// freeAll is the free memory of every receiver (enabled and normal),
	// freeOf each node's share of it: a set's free memory is freeAll less
	// its down nodes' shares, without a walk over every node per set.
	freeAll int64
	freeOf  map[string]int64
}

func newFailover(nodes []structs.Node, used map[string]structs.NodeUsage, byNode map[string][]structs.VM, orphans []structs.VM, opt Options) *failover {
	f := &failover{nodes: nodes, byNode: byNode, orphans: orphans, memUsed: map[string]int64{}, freeOf: map[string]int64{}}
	if p, err := newPlacerOn(nodes, used, opt); err == nil {
		f.base = p
	}
	for id, u := range used {
		f.memUsed[id] = u.MemoryMiB
	}
	for _, n := range nodes {
		if n.ManagementState == structs.NodeEnabled && n.MonitorState == structs.MonitorNormal {
			share := int64(n.MemoryMiB) - f.memUsed[n.ID]
			f.freeOf[n.ID] += share
			f.freeAll += share
		}
	}
	return f
}

// after places the protected VMs of the down nodes (and the orphans) on
// the remaining nodes, in RestartOrder; it returns the placement, the VMs
// left without a node (in restart order), the memory the receivers have
// left, and what each receiver got.
func (f *failover) after(down []string) (map[string]string, []string, int64, map[string]usage) {
	isDown := make(map[string]bool, len(down))
	free := f.freeAll
	for _, id := range down {
		if !isDown[id] {
			free -= f.freeOf[id]
		}
		isDown[id] = true
	}
	moving := slices.Clone(f.orphans)
	for _, id := range down {
		moving = append(moving, f.byNode[id]...)
	}
	placed := make(map[string]string, len(moving))
	recv := map[string]usage{}
	var unplaced []string
	if len(moving) == 0 {
		// Nothing protected to restart: the set costs O(its size), not a
		// copy of every node and usage (a cluster without ha VMs, or the
		// sets of nodes that hold none).
		return placed, unplaced, free, recv
	}
	RestartOrder(moving)
	alive := make([]structs.Node, 0, len(f.nodes))
	for _, n := range f.nodes {
		if !isDown[n.ID] {
			alive = append(alive, n)
		}
	}
	if f.base == nil {
		for _, v := range moving {
			unplaced = append(unplaced, v.ID)
		}
		return placed, unplaced, free, recv
	}
	p := &placer{nodes: alive, used: make(map[string]*usage, len(f.base.used)), strategy: f.base.strategy, overcomm: f.base.overcomm}
	for id, u := range f.base.used {
		c := *u
		if u.groups != nil {
			c.groups = maps.Clone(u.groups)
		}
		p.used[id] = &c
	}
	for _, v := range moving {
		if _, done := placed[v.ID]; done {
			continue
		}
		to, err := p.place(Request{VM: v})
		if err != nil {
			unplaced = append(unplaced, v.ID)
			continue
		}
		placed[v.ID] = to
		p.reserve(to, v)
		free -= int64(v.Spec.MemoryMiB)
		u := recv[to]
		u.vcpus += int64(v.Spec.VCPUs)
		u.memoryMiB += int64(v.Spec.MemoryMiB)
		recv[to] = u
	}
	return placed, unplaced, free, recv
}

// failureSets returns the sets of size nodes among candidates to try, and
// whether that is all of them. Sets and their members keep the candidates'
// (name) order.
func failureSets(candidates []string, size int, share map[string]*structs.NodeReserve) ([][]string, bool) {
	if size == 0 {
		return [][]string{nil}, true
	}
	if binomialAtMost(len(candidates), size, MaxFailureSets) {
		var out [][]string
		combinations(len(candidates), size, func(idx []int) {
			set := make([]string, len(idx))
			for i, j := range idx {
				set[i] = candidates[j]
			}
			out = append(out, set)
		})
		return out, true
	}
	pos := map[string]int{}
	for i, id := range candidates {
		pos[id] = i
	}
	keys := []func(*structs.NodeReserve) int64{
		func(n *structs.NodeReserve) int64 { return n.HAMemoryMiB },
		func(n *structs.NodeReserve) int64 { return n.HAVCPUs },
		func(n *structs.NodeReserve) int64 { return n.MemoryMiB },
		func(n *structs.NodeReserve) int64 { return n.VCPUs },
	}
	var out [][]string
	seen := map[string]bool{}
	for _, key := range keys {
		ranked := slices.Clone(candidates)
		slices.SortStableFunc(ranked, func(a, b string) int { return cmp.Compare(key(share[b]), key(share[a])) })
		set := ranked[:size]
		slices.SortFunc(set, func(a, b string) int { return cmp.Compare(pos[a], pos[b]) })
		k := strings.Join(set, ",")
		if !seen[k] {
			seen[k] = true
			out = append(out, slices.Clone(set))
		}
	}
	return out, false
}

// binomialAtMost reports whether C(n, k) <= limit, without overflowing.
func binomialAtMost(n, k, limit int) bool {
	k = min(k, n-k)
	c := 1
	for i := 1; i <= k; i++ {
		c = c * (n - k + i) / i
		if c > limit {
			return false
		}
	}
	return true
}

// combinations calls fn with every increasing k-tuple of 0..n-1, in
// lexicographic order (fn must not keep idx).
func combinations(n, k int, fn func(idx []int)) {
	idx := make([]int, k)
	for i := range idx {
		idx[i] = i
	}
	for {
		fn(idx)
		i := k - 1
		for i >= 0 && idx[i] == n-k+i {
			i--
		}
		if i < 0 {
			return
		}
		idx[i]++
		for j := i + 1; j < k; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
}

func reservationReason(r structs.HAReservation, share map[string]*structs.NodeReserve, tolerate, candidates int) string {
	names := func(ids []string) string {
		out := make([]string, len(ids))
		for i, id := range ids {
			out[i] = share[id].Name
		}
		return strings.Join(out, ", ")
	}
	var b strings.Builder
	if r.OK {
		fmt.Fprintf(&b, "%d protected VMs can be restarted after the loss of any %d of %d nodes", r.ProtectedVMs, tolerate, candidates)
		if !r.Exhaustive {
			fmt.Fprintf(&b, " (the %d heaviest failure sets tried)", r.SetsTried)
		}
	} else {
		fmt.Fprintf(&b, "%d of %d protected VMs could not be restarted", len(r.Unplaced), r.ProtectedVMs)
		if len(r.WorstCase) > 0 {
			fmt.Fprintf(&b, " after the loss of %s", names(r.WorstCase))
		}
		if tolerate > candidates {
			fmt.Fprintf(&b, " (%d failures tolerated, only %d nodes are up)", tolerate, candidates)
		}
	}
	if len(r.Failed) > 0 {
		fmt.Fprintf(&b, "; already unreachable: %s", names(r.Failed))
	}
	return b.String()
}

// Admit checks that the reservation still holds with vm placed on nodeID
// as a protected VM (a create, or a start of a stopped ha VM), given every
// VM already placed. A VM without ha is always admitted, and so is any VM
// when tolerate <= 0. A refusal is a Conflict naming the rule.
func Admit(nodes []structs.Node, vms []structs.VM, vm structs.VM, nodeID string, tolerate int, opt Options) error {
	if !vm.Spec.HA || tolerate <= 0 || nodeID == "" {
		return nil
	}
	vm.NodeID, vm.DesiredState = nodeID, structs.DesiredRunning
	with := make([]structs.VM, 0, len(vms)+1)
	for _, v := range vms {
		if v.ID != vm.ID {
			with = append(with, v)
		}
	}
	with = append(with, vm)
	return admitted(Reserve(nodes, with, tolerate, opt), vm, tolerate)
}

// AdmitOn is Admit over a usage view and the protected VMs (see
// ReserveOn): used must leave vm out where it sits now (fsm.FSM.Placement
// with vm's id skipped), protected may hold vm's old record.
func AdmitOn(nodes []structs.Node, used map[string]structs.NodeUsage, protected []structs.VM, vm structs.VM, nodeID string, tolerate int, opt Options) error {
	if !vm.Spec.HA || tolerate <= 0 || nodeID == "" {
		return nil
	}
	vm.NodeID, vm.DesiredState = nodeID, structs.DesiredRunning
	with := make([]structs.VM, 0, len(protected)+1)
	for _, v := range protected {
		if v.ID != vm.ID {
			with = append(with, v)
		}
	}
	with = append(with, vm)
	withUsed := make(map[string]structs.NodeUsage, len(used)+1)
	for id, u := range used {
		withUsed[id] = u
	}
	u := withUsed[nodeID]
	u.VMs++
	u.VCPUs += int64(vm.Spec.VCPUs)
	u.MemoryMiB += int64(vm.Spec.MemoryMiB)
	if g := vm.Spec.AntiAffinity; g != "" {
		groups := make(map[string]int, len(u.Groups)+1)
		for k, c := range u.Groups {
			groups[k] = c
		}
		groups[g]++
		u.Groups = groups
	}
	withUsed[nodeID] = u
	return admitted(ReserveOn(nodes, withUsed, with, tolerate, opt), vm, tolerate)
}

func admitted(r structs.HAReservation, vm structs.VM, tolerate int) error {
	if r.OK {
		return nil
	}
	return structs.Conflict("ha", "%s %d: vm %s refused: with it, %s", RuleTolerateFailures, tolerate, vm.Name, r.Reason)
}
