package heartbeat

import (
	"github.com/chime-ha/chime/chime/structs"
)

// readCache is the State one heartbeat is judged against: each VM, each
// node and the node's placed VMs are read from the state once, then
// served from here. It lives for one heartbeat only, so it is never older
// than the reads it replaces would have been by more than that
// heartbeat's own handling (the FSM judges every item again when the
// command applies).
type readCache struct {
	State
	vms    map[string]vmRead
	nodes  map[string]nodeRead
	onNode map[string]placedRead
}

type vmRead struct {
	vm  *structs.VM
	err error
}

type nodeRead struct {
	n   *structs.Node
	err error
}

type placedRead struct {
	vms []structs.VM
	idx uint64
	err error
}

func newReadCache(st State) *readCache {
	return &readCache{State: st, vms: map[string]vmRead{}, nodes: map[string]nodeRead{}, onNode: map[string]placedRead{}}
}

// VM returns a copy of the VM as first read (callers may modify it).
func (c *readCache) VM(id string) (*structs.VM, error) {
	r, ok := c.vms[id]
	if !ok {
		r.vm, r.err = c.State.VM(id)
		c.vms[id] = r
	}
	if r.vm == nil {
		return nil, r.err
	}
	v := *r.vm
	return &v, r.err
}

// Node returns a copy of the node as first read.
func (c *readCache) Node(id string) (*structs.Node, error) {
	r, ok := c.nodes[id]
	if !ok {
		r.n, r.err = c.State.Node(id)
		c.nodes[id] = r
	}
	if r.n == nil {
		return nil, r.err
	}
	n := *r.n
	return &n, r.err
}

// VMsOnNode reads the node's VMs once, and seeds the VM cache with them.
func (c *readCache) VMsOnNode(nodeID string) ([]structs.VM, uint64, error) {
	r, ok := c.onNode[nodeID]
	if !ok {
		r.vms, r.idx, r.err = c.State.VMsOnNode(nodeID)
		c.onNode[nodeID] = r
		if r.err == nil {
			for i := range r.vms {
				if _, seen := c.vms[r.vms[i].ID]; !seen {
					v := r.vms[i]
					c.vms[v.ID] = vmRead{vm: &v}
				}
			}
		}
	}
	return append([]structs.VM(nil), r.vms...), r.idx, r.err
}
