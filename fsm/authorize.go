package fsm

import (
	"github.com/chime-ha/chime/chime/structs"
)

// Per-node authorization of heartbeat items (issue 12): nothing an agent
// sends may move another node's VM. These rules apply to node.heartbeat
// entries with Authorized set; the heartbeat monitor uses the same ones to
// build its deltas.

// Source is what AdoptionProven reads of a VM's source node: whether it
// is fenced, and the hash of its secret (structs.HashSecret).
type Source func(nodeID string) (fenced bool, secretHash string)

// AdoptionProven says whether node nodeID's claim to have adopted v at
// generation gen is backed by evidence the node cannot make up itself: a
// server-ordered live migration to the node; the source's statement that
// it handed the generation over (proof: its structs.AdoptionProof, carried
// by its announcement and reported by the node); an entry of the source's
// migration log (a node-local migration to the node with outcome unknown
// or failed: a succeeded one moves the placement by itself); or the
// source node is fenced (it runs nothing, so the copy on the node is the
// only one). The node's own announcement is not proof: it only holds the
// VM.
func AdoptionProven(v *structs.VM, nodeID string, gen uint64, proof string, src Source) bool {
	if v.NodeID == "" || v.Generation != gen {
		return false
	}
	if m := v.Migration; m != nil && m.To == nodeID {
		return true
	}
	if nl := v.NodeLocal; nl != nil && nl.To == nodeID && nl.Generation == gen && nl.Outcome != "" {
		return true
	}
	fenced, hash := src(v.NodeID)
	return fenced || (v.NodeID != nodeID && structs.AdoptionProofValid(hash, v.ID, gen, proof))
}

// HeldFor says whether v is held for node nodeID at generation gen: a
// node-local migration to the node, announced or pending adoption, whose
// outcome is not known to have failed. A copy of v at gen on the node is
// then the migration's arrival, not a stale copy.
func HeldFor(v *structs.VM, nodeID string, gen uint64) bool {
	nl := v.NodeLocal
	return nl != nil && nl.To == nodeID && nl.Generation == gen && v.Generation == gen &&
		nl.Outcome != structs.LocalMigrationFailed && v.NodeID != nodeID
}

// WithoutHeld is ev without the copies held for node nodeID (HeldFor).
func WithoutHeld(ev CopyEvidence, nodeID string, vm func(id string) (*structs.VM, error)) (CopyEvidence, error) {
	keep := func(list []Copy) ([]Copy, error) {
		var out []Copy
		for _, c := range list {
			v, err := vm(c.VMID)
			if err != nil {
				return nil, err
			}
			if v != nil && HeldFor(v, nodeID, c.Generation) {
				continue
			}
			out = append(out, c)
		}
		return out, nil
	}
	var err error
	if ev.Running, err = keep(ev.Running); err != nil {
		return ev, err
	}
	ev.Destroyed, err = keep(ev.Destroyed)
	return ev, err
}

// source is AdoptionProven's view of a source node in this transaction.
func (a *applier) source(nodeID string) (bool, string) {
	n, err := a.tx.Node(nodeID)
	return err == nil && n != nil && n.Fenced, a.tx.NodeSecretHash(nodeID)
}

// holdForAdoption holds v for node n, whose adoption of it at gen is not
// proven yet: no rebuild starts it elsewhere while the node may run it. A
// record the source reported is never replaced.
func (a *applier) holdForAdoption(n *structs.Node, v *structs.VM, gen uint64) error {
	if nl := v.NodeLocal; nl != nil && (nl.Outcome != "" || (nl.To == n.ID && nl.Generation == gen)) {
		return nil
	}
	v.NodeLocal = &structs.NodeLocalMigration{To: n.ID, Generation: gen}
	if err := a.tx.PutObservedVM(v); err != nil {
		return err
	}
	return a.ev("vm.adoption_held", n.ID, v.ID, "vm %s: node %s reports it adopted generation %d by node-local migration; no server-ordered migration or report of its source %s records that migration yet: held (started nowhere else) until one does",
		v.Name, n.Name, gen, orNone(v.NodeID))
}
