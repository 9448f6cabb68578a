package state

import (
	"fmt"
	"sort"

	"github.com/chime-ha/chime/chime/structs"
)

// Buckets of nodes.
var (
	bucketNodes     = []byte("nodes")         // node id → structs.Node JSON
	bucketNodeNames = []byte("node_names")    // node name → node id (names are unique)
	bucketSecrets   = []byte("node_secrets")  // node id → sha256 hex of its agent's secret (never served)
	bucketNodeIndex = []byte("node_vm_index") // node id → last index at which what its agent must do changed
)

// Node returns the node with this id, or nil when there is none.
func (t *Tx) Node(id string) (*structs.Node, error) {
	var n structs.Node
	ok, err := getJSON(t.tx.Bucket(bucketNodes), id, &n)
	if err != nil || !ok {
		return nil, err
	}
	return &n, nil
}

// Nodes lists every node, sorted by name.
func (t *Tx) Nodes() ([]structs.Node, error) {
	var out []structs.Node
	err := forEachJSON(t.tx.Bucket(bucketNodes), func(n structs.Node) { out = append(out, n) })
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// LookupNode finds a node id by full id or name; otherwise it returns the
// (up to six) ids ref is a prefix of.
func (t *Tx) LookupNode(ref string) (string, []string) {
	return t.lookup(ref, bucketNodes, bucketNodeNames)
}

// NodeNameOwner returns the id of the node called name ("" if none).
func (t *Tx) NodeNameOwner(name string) string {
	return string(t.tx.Bucket(bucketNodeNames).Get([]byte(name)))
}

// PutNode stores n, stamped with the transaction's index. It does not
// touch the name index (PutNodeName) nor wake the agent (TouchNode): a
// node's own fields are not what its agent runs.
func (t *Tx) PutNode(n *structs.Node) error {
	if n.ID == "" {
		return fmt.Errorf("put node: a node without id")
	}
	n.ModifyIndex = t.index
	if err := putJSON(t.tx.Bucket(bucketNodes), n.ID, n); err != nil {
		return err
	}
	t.journalNode(n)
	return nil
}

// PutNodeName points name at node id, dropping the node's previous name
// when it had another one.
func (t *Tx) PutNodeName(id, name, previous string) error {
	names := t.tx.Bucket(bucketNodeNames)
	if previous != "" && previous != name {
		if err := names.Delete([]byte(previous)); err != nil {
			return err
		}
	}
	return names.Put([]byte(name), []byte(id))
}

// DeleteNode removes a node, its name and its secret, and wakes its agent's
// watch (which then fails authentication).
func (t *Tx) DeleteNode(n *structs.Node) error {
	if err := t.tx.Bucket(bucketNodes).Delete([]byte(n.ID)); err != nil {
		return err
	}
	t.written = append(t.written, Written{ID: n.ID, Deleted: true, IsNode: true})
	if err := t.tx.Bucket(bucketNodeNames).Delete([]byte(n.Name)); err != nil {
		return err
	}
	if err := t.tx.Bucket(bucketSecrets).Delete([]byte(n.ID)); err != nil {
		return err
	}
	return t.TouchNode(n.ID)
}

// NodeSecretHash returns the stored hash of a node's agent secret ("" if none).
func (t *Tx) NodeSecretHash(id string) string {
	return string(t.tx.Bucket(bucketSecrets).Get([]byte(id)))
}

// PutNodeSecretHash stores the hash of a node's agent secret.
func (t *Tx) PutNodeSecretHash(id, hash string) error {
	return t.tx.Bucket(bucketSecrets).Put([]byte(id), []byte(hash))
}

// TouchNode records that what a node's agent must act on changed at this
// index (a VM placed on or moved off it, its desired state, a migration
// order, the node's management state), which wakes that agent's blocking
// query and no other.
func (t *Tx) TouchNode(id string) error {
	return t.tx.Bucket(bucketNodeIndex).Put([]byte(id), u64(t.index))
}

// NodeIndex returns a node's desired-state index (see TouchNode).
func (t *Tx) NodeIndex(id string) uint64 {
	return getU64(t.tx.Bucket(bucketNodeIndex).Get([]byte(id)))
}
