package view

import (
	"cmp"
	"math"
	"slices"
	"strings"

	"github.com/google/btree"

	"github.com/chime-ha/chime/chime/structs"
)

// The free-capacity index lets a placement visit a handful of nodes
// instead of scoring every node of the cluster (scheduler.PlaceRanked).
//
// Nodes of one shape (memory and vCPUs) compare the same way under both
// strategies whatever the VM's size, because the VM takes the same from
// each: spread prefers the most free memory, then the most free vCPUs,
// then the name and id — that is the least used memory, then the least
// used vCPUs; bin-packing prefers the least free memory that still fits,
// then the same. So each shape keeps its nodes in two orders, and the
// first node of a shape's order that can take the VM is that shape's
// best; the scheduler compares the shapes' bests. Only nodes a VM may be
// placed on (enabled, normal) are indexed.

// shape is a node's capacity: the nodes of one shape rank alike.
type shape struct {
	memoryMiB, vcpus int
}

// freeItem is one node in its shape's orders.
type freeItem struct {
	shape            shape
	usedMem, usedCPU int64
	name, id         string
}

// freeClass is one shape's nodes in the two orders.
type freeClass struct {
	spread  *btree.BTreeG[freeItem] // least used memory first
	binpack *btree.BTreeG[freeItem] // most used memory first
}

func tieBreak(a, b freeItem) int {
	return cmp.Or(cmp.Compare(a.usedCPU, b.usedCPU), strings.Compare(a.name, b.name), strings.Compare(a.id, b.id))
}

func spreadLess(a, b freeItem) bool {
	return cmp.Or(cmp.Compare(a.usedMem, b.usedMem), tieBreak(a, b)) < 0
}

func binpackLess(a, b freeItem) bool {
	return cmp.Or(cmp.Compare(b.usedMem, a.usedMem), tieBreak(a, b)) < 0
}

// placeable is whether a VM may be placed on n at all (the scheduler's
// state rule; it checks it again).
func placeable(n *structs.Node) bool {
	return n.ManagementState == structs.NodeEnabled && n.MonitorState == structs.MonitorNormal
}

// reindex puts node id's entry in the index after its node or its usage
// changed (under v.mu, written).
func (v *View) reindex(id string) {
	if old, ok := v.indexed[id]; ok {
		c := v.free[old.shape]
		c.spread.Delete(old)
		c.binpack.Delete(old)
		if c.spread.Len() == 0 {
			delete(v.free, old.shape)
		}
		delete(v.indexed, id)
	}
	n, ok := v.nodes[id]
	if !ok || !placeable(&n) {
		return
	}
	it := freeItem{shape: shape{memoryMiB: n.MemoryMiB, vcpus: n.VCPUs}, name: n.Name, id: id}
	if u := v.usage[id]; u != nil {
		it.usedMem, it.usedCPU = u.MemoryMiB, u.VCPUs
	}
	c := v.free[it.shape]
	if c == nil {
		c = &freeClass{spread: btree.NewG(16, spreadLess), binpack: btree.NewG(16, binpackLess)}
		v.free[it.shape] = c
	}
	c.spread.ReplaceOrInsert(it)
	c.binpack.ReplaceOrInsert(it)
	v.indexed[id] = it
}

// Ranked walks the free-capacity index for placing VM vmID of memMiB:
// shape by shape (in no set order), the enabled and normal nodes of the
// shape best first under the strategy (binpack: bin-packing, else spread),
// bin-packing starting at the first node with memMiB free. visit gets a
// copy of the node and its usage (nil: none; never modify it, never keep
// it) and returns whether to go on with the shape. The view is locked for
// reading during the walk: visit must not call the view.
//
// Ranked walks nothing and answers false when vmID is placed on a node
// the index holds and that is not in exclude: the index counts the VM
// there, and a placement that moves it must not (use Placement). On an
// excluded node, or one no VM may be placed on, where it is counted does
// not change the answer.
func (v *View) Ranked(vmID string, exclude []string, binpack bool, memMiB int64, visit func(n *structs.Node, u *structs.NodeUsage) bool) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if e, ok := v.vms[vmID]; ok && e.nodeID != "" {
		if _, in := v.indexed[e.nodeID]; in && !slices.Contains(exclude, e.nodeID) {
			return false
		}
	}
	each := func(it freeItem) bool {
		n := v.nodes[it.id]
		return visit(&n, v.usage[it.id])
	}
	for sh, c := range v.free {
		if !binpack {
			c.spread.Ascend(each)
			continue
		}
		pivot := freeItem{usedMem: int64(sh.memoryMiB) - memMiB, usedCPU: math.MinInt64}
		c.binpack.AscendGreaterOrEqual(pivot, each)
	}
	return true
}
