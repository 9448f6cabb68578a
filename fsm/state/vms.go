package state

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/chime-ha/chime/chime/structs"
)

// Buckets of VMs.
var (
	bucketVMs       = []byte("vms")         // vm id → structs.VM JSON
	bucketVMNames   = []byte("vm_names")    // vm name → vm id (names are unique)
	bucketVMsByNode = []byte("vms_by_node") // "<node id>/<vm id>" → nothing: the placement index
)

func byNodeKey(nodeID, vmID string) []byte { return []byte(nodeID + "/" + vmID) }

// VM returns the VM with this id, or nil when there is none.
func (t *Tx) VM(id string) (*structs.VM, error) {
	var v structs.VM
	ok, err := getJSON(t.tx.Bucket(bucketVMs), id, &v)
	if err != nil || !ok {
		return nil, err
	}
	return &v, nil
}

// VMExists reports whether a VM with this id exists.
func (t *Tx) VMExists(id string) bool { return t.tx.Bucket(bucketVMs).Get([]byte(id)) != nil }

// VMs lists every VM, sorted by name.
func (t *Tx) VMs() ([]structs.VM, error) {
	var out []structs.VM
	err := forEachJSON(t.tx.Bucket(bucketVMs), func(v structs.VM) { out = append(out, v) })
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// LookupVM finds a VM id by full id or name; otherwise it returns the (up
// to six) ids ref is a prefix of.
func (t *Tx) LookupVM(ref string) (string, []string) { return t.lookup(ref, bucketVMs, bucketVMNames) }

// VMNameOwner returns the id of the VM called name ("" if none).
func (t *Tx) VMNameOwner(name string) string {
	return string(t.tx.Bucket(bucketVMNames).Get([]byte(name)))
}

// PutVMName reserves name for VM id.
func (t *Tx) PutVMName(name, id string) error {
	return t.tx.Bucket(bucketVMNames).Put([]byte(name), []byte(id))
}

// PutVM stores v stamped with the transaction's index, with its shown
// state derived, and wakes the agent of its placement node: everything
// that goes through PutVM is something that agent may have to act on.
func (t *Tx) PutVM(v *structs.VM) error {
	if v.NodeID != "" {
		if err := t.TouchNode(v.NodeID); err != nil {
			return err
		}
	}
	return t.putVMRecord(v)
}

// PutObservedVM stores v after a change of its observation only. It does
// not wake the placement node's agent: what an agent reports does not
// change what it must do, and a write that woke the reporting agent's own
// watch would turn every heartbeat into a reconcile round trip.
func (t *Tx) PutObservedVM(v *structs.VM) error { return t.putVMRecord(v) }

func (t *Tx) putVMRecord(v *structs.VM) error {
	if v.ID == "" {
		return fmt.Errorf("put vm: a VM without id")
	}
	v.ModifyIndex = t.index
	v.State = v.DeriveState()
	if err := putJSON(t.tx.Bucket(bucketVMs), v.ID, v); err != nil {
		return err
	}
	t.journalVM(v)
	return nil
}

// MovePlacement is the one way a VM's placement changes. It moves v from
// its current node (if any) to node to ("" = no node: pending), makes the
// transaction's index the new generation, sets the adopted generation
// (0 unless an older domain legitimately arrived on to, by live or
// node-local migration), keeps the placement index in step, wakes the
// agents of both nodes, and stores v. The caller has checked that the move
// is allowed (existence, compare-and-set, no migration in flight).
func (t *Tx) MovePlacement(v *structs.VM, to string, adoptGeneration uint64) error {
	if old := v.NodeID; old != "" {
		if err := t.tx.Bucket(bucketVMsByNode).Delete(byNodeKey(old, v.ID)); err != nil {
			return err
		}
		if err := t.TouchNode(old); err != nil {
			return err
		}
	}
	v.NodeID, v.Generation, v.AdoptGeneration = to, t.index, adoptGeneration
	v.NodeLocal = nil  // decided: whatever node-local migration was known is over
	v.HARestarts = nil // a new placement: automatic HA counts afresh
	if to != "" {
		if err := t.tx.Bucket(bucketVMsByNode).Put(byNodeKey(to, v.ID), nil); err != nil {
			return err
		}
	}
	return t.PutVM(v)
}

// DeleteVM removes a VM, its name and its placement, waking its node's agent.
func (t *Tx) DeleteVM(v *structs.VM) error {
	if v.NodeID != "" {
		if err := t.tx.Bucket(bucketVMsByNode).Delete(byNodeKey(v.NodeID, v.ID)); err != nil {
			return err
		}
		if err := t.TouchNode(v.NodeID); err != nil {
			return err
		}
	}
	if err := t.tx.Bucket(bucketVMs).Delete([]byte(v.ID)); err != nil {
		return err
	}
	t.written = append(t.written, Written{ID: v.ID, Deleted: true})
	return t.tx.Bucket(bucketVMNames).Delete([]byte(v.Name))
}

// VMIDsOnNode lists the ids of the VMs placed on a node, from the
// placement index alone (no record is decoded).
func (t *Tx) VMIDsOnNode(nodeID string) []string {
	var out []string
	prefix := []byte(nodeID + "/")
	c := t.tx.Bucket(bucketVMsByNode).Cursor()
	for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
		out = append(out, string(k[len(prefix):]))
	}
	return out
}

// VMsOnNode lists the VMs placed on a node, sorted by name, through the
// placement index.
func (t *Tx) VMsOnNode(nodeID string) ([]structs.VM, error) {
	var out []structs.VM
	prefix := []byte(nodeID + "/")
	c := t.tx.Bucket(bucketVMsByNode).Cursor()
	vms := t.tx.Bucket(bucketVMs)
	for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
		raw := vms.Get(k[len(prefix):])
		if raw == nil {
			return nil, fmt.Errorf("placement index names missing vm %s", k[len(prefix):])
		}
		var v structs.VM
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("decode vm %s: %w", k[len(prefix):], err)
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// HasVMsOnNode reports whether any VM is placed on the node.
func (t *Tx) HasVMsOnNode(nodeID string) bool {
	prefix := []byte(nodeID + "/")
	k, _ := t.tx.Bucket(bucketVMsByNode).Cursor().Seek(prefix)
	return k != nil && len(k) > len(prefix) && strings.HasPrefix(string(k), string(prefix))
}
