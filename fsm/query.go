package fsm

import (
	"context"
	"strings"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/state"
)

// Reads for the server. Each runs in one bbolt read transaction, straight
// on the state, concurrently with Apply.

// WaitIndex blocks until the applied index is greater than min or ctx ends,
// and returns the applied index. It is the basis of blocking queries.
func (f *FSM) WaitIndex(ctx context.Context, min uint64) uint64 {
	for {
		ch, idx := f.Changed()
		if idx > min {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return f.Index()
		}
	}
}

// WaitFor blocks until fn's answer is greater than min or ctx ends. fn is
// re-evaluated after every apply; use it for per-object indexes (a node's
// desired-state index) so that unrelated writes do not wake the caller.
func (f *FSM) WaitFor(ctx context.Context, min uint64, fn func() uint64) uint64 {
	for {
		ch, _ := f.Changed()
		if v := fn(); v > min {
			return v
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fn()
		}
	}
}

// Nodes lists every node, sorted by name.
func (f *FSM) Nodes() ([]structs.Node, error) {
	var out []structs.Node
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.Nodes(); return })
	return out, err
}

// Node returns one node by id.
func (f *FSM) Node(id string) (*structs.Node, error) {
	var n *structs.Node
	if err := f.view(func(tx *state.Tx) (err error) { n, err = tx.Node(id); return }); err != nil {
		return nil, err
	}
	if n == nil {
		return nil, structs.NotFound("node", "node %q not found", id)
	}
	return n, nil
}

// VMs lists every VM, sorted by name.
func (f *FSM) VMs() ([]structs.VM, error) {
	var out []structs.VM
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.VMs(); return })
	return out, err
}

// VM returns one VM by id.
func (f *FSM) VM(id string) (*structs.VM, error) {
	var v *structs.VM
	if err := f.view(func(tx *state.Tx) (err error) { v, err = tx.VM(id); return }); err != nil {
		return nil, err
	}
	if v == nil {
		return nil, structs.NotFound("vm", "vm %q not found", id)
	}
	return v, nil
}

// VMsOnNode lists the VMs placed on a node (index lookup) and the node's
// desired-state index: the Raft index of the last change to what the node
// must run. Both are read in one transaction.
func (f *FSM) VMsOnNode(nodeID string) ([]structs.VM, uint64, error) {
	var out []structs.VM
	var idx uint64
	err := f.view(func(tx *state.Tx) (err error) {
		idx = tx.NodeIndex(nodeID)
		out, err = tx.VMsOnNode(nodeID)
		return
	})
	return out, idx, err
}

// NodeIndex returns a node's desired-state index (see VMsOnNode).
func (f *FSM) NodeIndex(nodeID string) uint64 {
	var idx uint64
	_ = f.view(func(tx *state.Tx) error { idx = tx.NodeIndex(nodeID); return nil })
	return idx
}

// ResolveVM finds a VM by full uuid, unique uuid prefix, or name.
func (f *FSM) ResolveVM(ref string) (*structs.VM, error) {
	id, err := f.resolve(ref, "vm", (*state.Tx).LookupVM)
	if err != nil {
		return nil, err
	}
	return f.VM(id)
}

// ResolveNode finds a node by full uuid, unique uuid prefix, or name.
func (f *FSM) ResolveNode(ref string) (*structs.Node, error) {
	id, err := f.resolve(ref, "node", (*state.Tx).LookupNode)
	if err != nil {
		return nil, err
	}
	return f.Node(id)
}

func (f *FSM) resolve(ref, what string, lookup func(*state.Tx, string) (string, []string)) (string, error) {
	if ref == "" {
		return "", structs.Invalid(what, "an id, id prefix or name is required")
	}
	var id string
	var matches []string
	if err := f.view(func(tx *state.Tx) error { id, matches = lookup(tx, ref); return nil }); err != nil {
		return "", err
	}
	if id != "" {
		return id, nil
	}
	switch len(matches) {
	case 0:
		return "", structs.NotFound(what, "no %s with id, id prefix or name %q", what, ref)
	case 1:
		return matches[0], nil
	}
	return "", structs.Invalid(what, "%q is ambiguous: it is a prefix of %d or more %s ids (%s, ...): give more characters", ref, len(matches), what, strings.Join(matches[:2], ", "))
}

// Tasks lists tasks, newest first.
func (f *FSM) Tasks() ([]structs.Task, error) {
	var out []structs.Task
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.Tasks(); return })
	return out, err
}

// TaskIndex is the Raft index of the last task write, at least 1: a
// blocking query on an empty list (index=1) then waits for the first task
// instead of answering at once. A state written before the counter existed
// has none until its next task write: its tasks' newest modify index
// stands in.
func (f *FSM) TaskIndex() uint64 {
	var idx uint64
	_ = f.view(func(tx *state.Tx) error {
		if idx = tx.TaskIndex(); idx > 0 {
			return nil
		}
		tasks, err := tx.Tasks()
		for _, t := range tasks {
			idx = max(idx, t.ModifyIndex)
		}
		return err
	})
	return max(idx, 1)
}

// Task returns one task by id.
func (f *FSM) Task(id string) (*structs.Task, error) {
	var t *structs.Task
	if err := f.view(func(tx *state.Tx) (err error) { t, err = tx.Task(id); return }); err != nil {
		return nil, err
	}
	if t == nil {
		return nil, structs.NotFound("task", "task %q not found", id)
	}
	return t, nil
}

// Events returns up to limit events with a sequence number greater than after.
func (f *FSM) Events(after uint64, limit int) ([]structs.Event, error) {
	var out []structs.Event
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.Events(after, limit); return })
	return out, err
}

// LastEventSeq returns the sequence number of the newest event.
func (f *FSM) LastEventSeq() uint64 {
	var seq uint64
	_ = f.view(func(tx *state.Tx) error { seq = tx.LastEventSeq(); return nil })
	return seq
}

// Dump returns the whole state as plain values, for tests and debugging:
// two FSMs with equal dumps hold identical state.
func (f *FSM) Dump() (map[string]map[string]string, error) {
	var out map[string]map[string]string
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.Dump(); return })
	return out, err
}

// NodeSecretHash returns the stored hash of a node's agent secret ("" if none).
func (f *FSM) NodeSecretHash(nodeID string) string {
	var h string
	_ = f.view(func(tx *state.Tx) error { h = tx.NodeSecretHash(nodeID); return nil })
	return h
}

// Alarms lists the recorded alarms (firing, and resolved not yet delivered).
func (f *FSM) Alarms() ([]AlarmRecord, error) {
	var out []AlarmRecord
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.Alarms(); return })
	return out, err
}

// Applied returns what a request id was applied as (object id, and the
// error it failed with), and whether it was seen. Handlers use it so that
// a retried write answers like the first attempt, even when the state now
// makes the request look invalid (a retried create sees its own name).
func (f *FSM) Applied(reqID string) (objectID string, err error, seen bool) {
	if reqID == "" {
		return "", nil, false
	}
	_ = f.view(func(tx *state.Tx) error {
		rec, rerr := tx.Request(reqID)
		if rerr != nil || rec == nil {
			return nil
		}
		seen, objectID, err = true, rec.ObjectID, rec.Refusal()
		return nil
	})
	return objectID, err, seen
}

// ACLTokens lists the ACL tokens (never their secrets).
func (f *FSM) ACLTokens() ([]structs.ACLToken, error) {
	var out []structs.ACLToken
	err := f.view(func(tx *state.Tx) (err error) { out, err = tx.ACLTokens(); return })
	return out, err
}

// ACLTokenByHash returns the token whose secret has this SHA-256 (hex),
// or nil.
func (f *FSM) ACLTokenByHash(hash string) (*structs.ACLToken, error) {
	var tok *structs.ACLToken
	err := f.view(func(tx *state.Tx) (err error) {
		if acc := tx.ACLAccessorByHash(hash); acc != "" {
			tok, err = tx.ACLToken(acc)
		}
		return
	})
	return tok, err
}

// ACLBootstrapIndex is the index at which ACLs were bootstrapped (0: not yet).
func (f *FSM) ACLBootstrapIndex() uint64 {
	var idx uint64
	_ = f.view(func(tx *state.Tx) error { idx = tx.ACLBootstrapIndex(); return nil })
	return idx
}

// HA returns the cluster-wide automatic-HA switch (armed, brake).
func (f *FSM) HA() (structs.HAState, error) {
	var s structs.HAState
	err := f.view(func(tx *state.Tx) (err error) { s, err = tx.HA(); return })
	return s, err
}

// Placement is one consistent read of the derived view for a placement
// decision: every node (sorted by name) and each node's usage, the VMs in
// skip left out. No decoding, and the nodes are not copied: they are
// shared with every reader and must not be modified.
func (f *FSM) Placement(skip ...string) ([]structs.Node, map[string]structs.NodeUsage) {
	return f.derived.Placement(skip...)
}

// Ranked walks the derived view's free-capacity index for placing VM vmID
// (view.View.Ranked; scheduler.PlaceRanked).
func (f *FSM) Ranked(vmID string, exclude []string, binpack bool, memMiB int64, visit func(n *structs.Node, u *structs.NodeUsage) bool) bool {
	return f.derived.Ranked(vmID, exclude, binpack, memMiB, visit)
}

// PendingVMs lists the VMs placed on no node, sorted by name, from the
// derived view's index (no scan of every VM), and the view's epoch: it
// grows whenever a pending VM could now fit or be admitted where it could
// not (view.View.Epoch).
func (f *FSM) PendingVMs() ([]structs.VM, uint64, error) {
	ids, epoch := f.derived.Pending()
	vms, err := f.vmsByID(ids)
	return vms, epoch, err
}

// HeldVMs lists the VMs whose live-migration outcome is unknown, sorted by
// name, from the derived view's index.
func (f *FSM) HeldVMs() ([]structs.VM, error) { return f.vmsByID(f.derived.Held()) }

// vmsByID reads the VMs of ids in one transaction, in order, skipping any
// deleted since the view was read.
func (f *FSM) vmsByID(ids []string) ([]structs.VM, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out := make([]structs.VM, 0, len(ids))
	err := f.view(func(tx *state.Tx) error {
		for _, id := range ids {
			v, err := tx.VM(id)
			if err != nil {
				return err
			}
			if v != nil {
				out = append(out, *v)
			}
		}
		return nil
	})
	return out, err
}

// MigratingVMs lists the VMs with a live migration recorded (from or to
// any node), sorted by name, from the derived view's index.
func (f *FSM) MigratingVMs() ([]structs.VM, error) { return f.vmsByID(f.derived.Migrating()) }

// NodesView lists every node, sorted by name, from the derived view: no
// bbolt read and no decoding, for the readers that walk every node often
// (the node monitor, the alarmer, metrics). It may run ahead of Nodes by
// the commands of a batch being applied. The slice is shared with every
// reader (it is not copied): never modify it.
func (f *FSM) NodesView() []structs.Node { return f.derived.Nodes() }

// VMStates counts the VMs by observed state, from the derived view.
func (f *FSM) VMStates() map[string]int { return f.derived.VMStates() }

// PlacementEpoch is the derived view's epoch (see PendingVMs).
func (f *FSM) PlacementEpoch() uint64 { return f.derived.Epoch() }

// ProtectedVMs lists the protected VMs (ha, desired running, placed),
// sorted by name, from the derived view's index.
func (f *FSM) ProtectedVMs() ([]structs.VM, error) { return f.vmsByID(f.derived.Protected()) }

// Incidents lists the incidents, newest first, in state st ("" any) and
// about node nodeID ("" any).
func (f *FSM) Incidents(st, nodeID string) ([]structs.Incident, error) {
	var out []structs.Incident
	err := f.view(func(tx *state.Tx) (err error) {
		out, err = tx.Incidents(func(i *structs.Incident) bool {
			return (st == "" || i.State == st) && (nodeID == "" || i.NodeID == nodeID)
		})
		return
	})
	return out, err
}

// Incident returns one incident, or nil.
func (f *FSM) Incident(id uint64) (*structs.Incident, error) {
	var inc *structs.Incident
	err := f.view(func(tx *state.Tx) (err error) { inc, err = tx.Incident(id); return })
	return inc, err
}

// IncidentIndex is the Raft index of the last incident write, at least 1:
// a blocking query on an empty list (index=1) then waits for the first
// incident instead of answering at once.
func (f *FSM) IncidentIndex() uint64 {
	var idx uint64
	_ = f.view(func(tx *state.Tx) error { idx = tx.IncidentIndex(); return nil })
	return max(idx, 1)
}

// ResolvedIncidents is how many resolved incidents the state keeps.
func (f *FSM) ResolvedIncidents() uint64 {
	var n uint64
	_ = f.view(func(tx *state.Tx) error { n = tx.ResolvedIncidents(); return nil })
	return n
}
