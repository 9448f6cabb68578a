// Package view is the FSM's derived, in-memory view of the replicated
// state that the write path needs without decoding every VM: what the VMs
// placed on each node take (usage), the nodes as stored (sorted by name,
// shared copy-on-write), the pending (unplaced) VMs, the protected ones
// (automatic HA), the held ones (live-migration outcome unknown) and the
// migrating ones (a live migration recorded).
//
// It is a cache of the state, never a source: the FSM applies to it what
// each committed transaction wrote (state.Tx.Written), and rebuilds it from
// the state file on Open and Restore. It is therefore a pure function of
// the state, which keeps the FSM deterministic when an apply reads it (the
// capacity compare-and-set of a create).
package view

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/state"
)

// vmEntry is what the view keeps of one VM.
type vmEntry struct {
	name      string
	nodeID    string
	vcpus     int64
	memoryMiB int64
	group     string
	held      bool
	protected bool   // ha, desired running, placed: what admission control counts
	migrating bool   // a live migration is recorded (vm.Migration != nil)
	state     string // observed state (metrics)
}

// nodeSig is what of a node decides whether VMs can be placed on it.
type nodeSig struct {
	vcpus, memoryMiB int
	mgmt, monitor    string
}

// View is safe for concurrent use: one writer (the FSM's apply), many
// readers.
type View struct {
	mu      sync.RWMutex
	vms     map[string]vmEntry
	usage   map[string]*structs.NodeUsage
	nodes   map[string]structs.Node
	pending map[string]struct{}
	held    map[string]struct{}
	prot    map[string]struct{} // protected VMs (scheduler.Protected)
	migr    map[string]struct{} // VMs with a live migration recorded (from or to any node)
	// sorted is nodes sorted by name then id, built on the first read after
	// a node was added, renamed or removed (nil: to be built). It is never
	// modified once built (a node's write replaces it by a copy), so that
	// readers share it without copying 10,000 nodes per placement.
	sorted []structs.Node
	// epoch grows whenever a pending VM could now fit or be admitted where
	// it could not: a VM became pending, capacity was freed, a node was
	// added or its capacity or states changed, a VM became protected or
	// stopped being protected (the HA reservation).
	epoch uint64
	// free is the free-capacity index of the nodes a VM may be placed on
	// (enabled, normal): per node shape, the nodes ordered by usage, kept
	// on every write (see Ranked).
	free    map[shape]*freeClass
	indexed map[string]freeItem // node id → its entry in free
}

// New returns an empty view (the view of an empty state).
func New() *View {
	v := &View{}
	v.reset()
	return v
}

func (v *View) reset() {
	v.vms = map[string]vmEntry{}
	v.usage = map[string]*structs.NodeUsage{}
	v.nodes = map[string]structs.Node{}
	v.pending = map[string]struct{}{}
	v.held = map[string]struct{}{}
	v.prot = map[string]struct{}{}
	v.migr = map[string]struct{}{}
	v.sorted = nil
	v.free = map[shape]*freeClass{}
	v.indexed = map[string]freeItem{}
	v.epoch++
}

// Rebuild replaces the view with one of the state read through tx (one
// decode of every VM and node: on Open and Restore only).
func (v *View) Rebuild(tx *state.Tx) error {
	nodes, err := tx.Nodes()
	if err != nil {
		return err
	}
	vms, err := tx.VMs()
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reset()
	for i := range nodes {
		v.putNode(&nodes[i])
	}
	for i := range vms {
		v.putVM(&vms[i])
	}
	return nil
}

// Apply applies what one committed transaction wrote, in order.
func (v *View) Apply(written []state.Written) {
	if len(written) == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.apply(written, nil)
}

// ApplyUndoable is Apply for a transaction not committed yet (one command
// of a batch): undo takes the view back to what it was before, should the
// transaction roll back.
func (v *View) ApplyUndoable(written []state.Written) (undo func()) {
	if len(written) == 0 {
		return func() {}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var recs []undoRec
	// The sorted node list is never modified once built: the undo puts
	// back the one from before (rather than dropping it, which made the
	// next reader sort 10,000 nodes after each batch that fell back on a
	// refused compare-and-set: 4.5 % of the leader's CPU in issue 14's
	// evacuation).
	sortedBefore := v.sorted
	v.apply(written, &recs)
	return func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		defer func() { v.sorted = sortedBefore }()
		for i := len(recs) - 1; i >= 0; i-- {
			r := recs[i]
			if r.isNode {
				if r.had {
					v.nodes[r.id] = r.node
				} else {
					delete(v.nodes, r.id)
				}
				v.reindex(r.id)
				v.sorted = nil
				v.epoch++
				continue
			}
			v.removeVM(r.id)
			if r.had {
				v.putEntry(r.id, r.vm)
			}
		}
	}
}

// undoRec is what one write replaced.
type undoRec struct {
	isNode bool
	id     string
	had    bool
	vm     vmEntry
	node   structs.Node
}

func (v *View) apply(written []state.Written, undo *[]undoRec) {
	for _, w := range written {
		if undo != nil {
			r := undoRec{isNode: w.IsNode, id: w.ID}
			if w.IsNode {
				r.node, r.had = v.nodes[w.ID]
			} else {
				r.vm, r.had = v.vms[w.ID]
			}
			*undo = append(*undo, r)
		}
		switch {
		case w.IsNode && w.Deleted:
			delete(v.nodes, w.ID)
			v.reindex(w.ID)
			v.sorted = nil
			v.epoch++
		case w.IsNode:
			v.putNode(w.Node)
		case w.Deleted:
			v.removeVM(w.ID)
		default:
			v.putVM(w.VM)
		}
	}
}

func (v *View) putNode(n *structs.Node) {
	old, had := v.nodes[n.ID]
	v.nodes[n.ID] = *n
	v.reindex(n.ID)
	v.updateSorted(n, had && old.Name == n.Name)
	if !had || sigOf(&old) != sigOf(n) {
		v.epoch++
	}
}

func sigOf(n *structs.Node) nodeSig {
	return nodeSig{vcpus: n.VCPUs, memoryMiB: n.MemoryMiB, mgmt: n.ManagementState, monitor: n.MonitorState}
}

func (v *View) putVM(vm *structs.VM) {
	e := vmEntry{name: vm.Name, nodeID: vm.NodeID, vcpus: int64(vm.Spec.VCPUs), memoryMiB: int64(vm.Spec.MemoryMiB),
		group: vm.Spec.AntiAffinity, held: vm.Held(),
		protected: vm.Spec.HA && vm.DesiredState == structs.DesiredRunning && vm.NodeID != "",
		migrating: vm.Migration != nil, state: vm.State}
	old, had := v.vms[vm.ID]
	if had && old.nodeID == e.nodeID && old.vcpus == e.vcpus && old.memoryMiB == e.memoryMiB && old.group == e.group {
		// Placement and size unchanged: the held flag, the name and
		// whether admission control counts it may differ.
		if old.protected != e.protected {
			v.epoch++ // the HA reservation changed: a pending VM may be admitted now
		}
		v.vms[vm.ID] = e
		v.setHeld(vm.ID, e.held)
		v.setProtected(vm.ID, e.protected)
		setIn(v.migr, vm.ID, e.migrating)
		return
	}
	if had {
		v.removeVM(vm.ID)
	}
	v.putEntry(vm.ID, e)
}

// putEntry adds a VM the view does not hold.
func (v *View) putEntry(id string, e vmEntry) {
	v.vms[id] = e
	v.setHeld(id, e.held)
	v.setProtected(id, e.protected)
	setIn(v.migr, id, e.migrating)
	if e.nodeID == "" {
		v.pending[id] = struct{}{}
		v.epoch++
		return
	}
	u := v.usage[e.nodeID]
	if u == nil {
		u = &structs.NodeUsage{}
		v.usage[e.nodeID] = u
	}
	u.VMs++
	u.VCPUs += e.vcpus
	u.MemoryMiB += e.memoryMiB
	if e.group != "" {
		if u.Groups == nil {
			u.Groups = map[string]int{}
		}
		u.Groups[e.group]++
	}
	v.reindex(e.nodeID)
}

// setIn adds id to set when in holds, and removes it otherwise.
func setIn(set map[string]struct{}, id string, in bool) {
	if in {
		set[id] = struct{}{}
	} else {
		delete(set, id)
	}
}

func (v *View) setProtected(id string, p bool) {
	if p {
		v.prot[id] = struct{}{}
	} else {
		delete(v.prot, id)
	}
}

func (v *View) setHeld(id string, held bool) {
	if held {
		v.held[id] = struct{}{}
	} else {
		delete(v.held, id)
	}
}

func (v *View) removeVM(id string) {
	e, ok := v.vms[id]
	if !ok {
		return
	}
	delete(v.vms, id)
	delete(v.held, id)
	delete(v.prot, id)
	delete(v.migr, id)
	if e.nodeID == "" {
		delete(v.pending, id)
		return
	}
	v.epoch++ // capacity freed
	u := v.usage[e.nodeID]
	if u == nil {
		return
	}
	u.VMs--
	u.VCPUs -= e.vcpus
	u.MemoryMiB -= e.memoryMiB
	if e.group != "" {
		if u.Groups[e.group]--; u.Groups[e.group] <= 0 {
			delete(u.Groups, e.group)
		}
	}
	if u.VMs == 0 {
		delete(v.usage, e.nodeID)
	}
	v.reindex(e.nodeID)
}

// Usage returns what the VMs placed on node id take (zero when none).
func (v *View) Usage(id string) structs.NodeUsage {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return copyUsage(v.usage[id])
}

func copyUsage(u *structs.NodeUsage) structs.NodeUsage {
	if u == nil {
		return structs.NodeUsage{}
	}
	c := *u
	c.Groups = nil
	if len(u.Groups) > 0 {
		c.Groups = maps.Clone(u.Groups)
	}
	return c
}

// Placement is one consistent read for a placement decision: every node
// (sorted by name, then id) and the usage of every node that has VMs, with
// the VMs named in skip left out (they are being moved). The nodes are
// shared with every reader (see Nodes): never modify them; the usage is
// the caller's.
func (v *View) Placement(skip ...string) ([]structs.Node, map[string]structs.NodeUsage) {
	for {
		v.mu.RLock()
		if v.sorted != nil {
			nodes, used := v.placementLocked(v.sorted, skip)
			v.mu.RUnlock()
			return nodes, used
		}
		v.mu.RUnlock()
		v.buildSorted()
	}
}

// placementLocked is Placement under v.mu (read).
func (v *View) placementLocked(nodes []structs.Node, skip []string) ([]structs.Node, map[string]structs.NodeUsage) {
	used := make(map[string]structs.NodeUsage, len(v.usage))
	for id, u := range v.usage {
		used[id] = copyUsage(u)
	}
	for _, id := range skip {
		e, ok := v.vms[id]
		if !ok || e.nodeID == "" {
			continue
		}
		u := used[e.nodeID]
		u.VMs--
		u.VCPUs -= e.vcpus
		u.MemoryMiB -= e.memoryMiB
		if e.group != "" && u.Groups != nil {
			if u.Groups[e.group]--; u.Groups[e.group] <= 0 {
				delete(u.Groups, e.group)
			}
			if len(u.Groups) == 0 {
				u.Groups = nil
			}
		}
		if u.VMs == 0 {
			delete(used, e.nodeID)
			continue
		}
		used[e.nodeID] = u
	}
	return nodes, used
}

// Pending returns the ids of the VMs placed on no node, sorted by VM name
// then id (the order the pending loop places them in), and the epoch.
func (v *View) Pending() ([]string, uint64) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.sortedIDs(v.pending), v.epoch
}

// Held returns the ids of the VMs whose live-migration outcome is unknown,
// sorted by VM name then id.
func (v *View) Held() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.sortedIDs(v.held)
}

// Protected returns the ids of the protected VMs (ha, desired running,
// placed), sorted by VM name then id.
func (v *View) Protected() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.sortedIDs(v.prot)
}

// Migrating returns the ids of the VMs with a live migration recorded
// (from or to any node), sorted by VM name then id.
func (v *View) Migrating() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.sortedIDs(v.migr)
}

// Nodes returns every node as stored, sorted by name then id: a copy of
// the view's, no decoding. Like every read of the view it may run ahead of
// the state file by the commands of a batch being applied (undone should
// the batch fall back).
//
// The slice is shared by every reader: never modify it (nor the nodes'
// slices and maps).
func (v *View) Nodes() []structs.Node {
	for {
		v.mu.RLock()
		if s := v.sorted; s != nil {
			v.mu.RUnlock()
			return s
		}
		v.mu.RUnlock()
		v.buildSorted()
	}
}

// buildSorted sorts the nodes into v.sorted unless it is built already.
func (v *View) buildSorted() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sorted != nil {
		return
	}
	nodes := make([]structs.Node, 0, len(v.nodes))
	for _, n := range v.nodes {
		nodes = append(nodes, n)
	}
	sortNodes(nodes)
	v.sorted = nodes
}

// updateSorted keeps v.sorted after n was written (under v.mu): a node
// that kept its name is replaced in a copy of the list (a monitor
// transition, a drain: no sort); a new or renamed node drops the list, to
// be sorted again by the next reader.
func (v *View) updateSorted(n *structs.Node, sameName bool) {
	if v.sorted == nil {
		return
	}
	if sameName {
		i, found := slices.BinarySearchFunc(v.sorted, n, func(e structs.Node, t *structs.Node) int {
			if e.Name != t.Name {
				return strings.Compare(e.Name, t.Name)
			}
			return strings.Compare(e.ID, t.ID)
		})
		if found {
			s := slices.Clone(v.sorted)
			s[i] = *n
			v.sorted = s
			return
		}
	}
	v.sorted = nil
}

// Node returns one node as stored, and whether the view holds it.
func (v *View) Node(id string) (structs.Node, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	n, ok := v.nodes[id]
	return n, ok
}

// VMStates counts the VMs by observed state ("" for never observed).
func (v *View) VMStates() map[string]int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := map[string]int{}
	for _, e := range v.vms {
		out[e.state]++
	}
	return out
}

func sortNodes(nodes []structs.Node) {
	sort.Slice(nodes, func(i, j int) bool {
		if nodes[i].Name != nodes[j].Name {
			return nodes[i].Name < nodes[j].Name
		}
		return nodes[i].ID < nodes[j].ID
	})
}

// Epoch grows whenever a pending VM could now fit where it did not.
func (v *View) Epoch() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.epoch
}

func (v *View) sortedIDs(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := v.vms[out[i]], v.vms[out[j]]
		if a.name != b.name {
			return a.name < b.name
		}
		return out[i] < out[j]
	})
	return out
}
