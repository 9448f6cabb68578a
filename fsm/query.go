package fsm

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/chime-ha/chime/chime/structs"

	bolt "go.etcd.io/bbolt"
)

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
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(_, v []byte) error {
			var n structs.Node
			if err := json.Unmarshal(v, &n); err != nil {
				return err
			}
			out = append(out, n)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// Node returns one node by id.
func (f *FSM) Node(id string) (*structs.Node, error) {
	var n structs.Node
	var ok bool
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketNodes), id, &n)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, structs.NotFound("node", "node %q not found", id)
	}
	return &n, nil
}

// VMs lists every VM, sorted by name.
func (f *FSM) VMs() ([]structs.VM, error) {
	var out []structs.VM
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).ForEach(func(_, v []byte) error {
			var vm structs.VM
			if err := json.Unmarshal(v, &vm); err != nil {
				return err
			}
			out = append(out, vm)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// VM returns one VM by id.
func (f *FSM) VM(id string) (*structs.VM, error) {
	var v structs.VM
	var ok bool
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketVMs), id, &v)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, structs.NotFound("vm", "vm %q not found", id)
	}
	return &v, nil
}

// VMsOnNode lists the VMs placed on a node (index lookup) and the node's
// desired-state index: the Raft index of the last change to what the node
// must run.
func (f *FSM) VMsOnNode(nodeID string) ([]structs.VM, uint64, error) {
	var out []structs.VM
	var idx uint64
	err := f.view(func(tx *bolt.Tx) error {
		idx = getU64(tx.Bucket(bucketNodeIndex).Get([]byte(nodeID)))
		prefix := []byte(nodeID + "/")
		c := tx.Bucket(bucketVMsByNode).Cursor()
		vms := tx.Bucket(bucketVMs)
		for k, _ := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, _ = c.Next() {
			var v structs.VM
			raw := vms.Get(k[len(prefix):])
			if raw == nil {
				return fmt.Errorf("index names missing vm %s", k[len(prefix):])
			}
			if err := json.Unmarshal(raw, &v); err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, idx, err
}

// NodeIndex returns a node's desired-state index (see VMsOnNode).
func (f *FSM) NodeIndex(nodeID string) uint64 {
	var idx uint64
	_ = f.view(func(tx *bolt.Tx) error {
		idx = getU64(tx.Bucket(bucketNodeIndex).Get([]byte(nodeID)))
		return nil
	})
	return idx
}

// ResolveVM finds a VM by full uuid, unique uuid prefix, or name.
func (f *FSM) ResolveVM(ref string) (*structs.VM, error) {
	id, err := f.resolve(ref, "vm", bucketVMs, bucketVMNames)
	if err != nil {
		return nil, err
	}
	return f.VM(id)
}

// ResolveNode finds a node by full uuid, unique uuid prefix, or name.
func (f *FSM) ResolveNode(ref string) (*structs.Node, error) {
	id, err := f.resolve(ref, "node", bucketNodes, bucketNodeNames)
	if err != nil {
		return nil, err
	}
	return f.Node(id)
}

func (f *FSM) resolve(ref, what string, objects, names []byte) (string, error) {
	if ref == "" {
		return "", structs.Invalid(what, "an id, id prefix or name is required")
	}
	var id string
	var matches []string
	err := f.view(func(tx *bolt.Tx) error {
		if tx.Bucket(objects).Get([]byte(ref)) != nil {
			id = ref
			return nil
		}
		if v := tx.Bucket(names).Get([]byte(ref)); v != nil {
			id = string(v)
			return nil
		}
		c := tx.Bucket(objects).Cursor()
		for k, _ := c.Seek([]byte(ref)); k != nil && strings.HasPrefix(string(k), ref); k, _ = c.Next() {
			matches = append(matches, string(k))
			if len(matches) > 5 {
				break
			}
		}
		return nil
	})
	if err != nil {
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
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTasks).ForEach(func(_, v []byte) error {
			var t structs.Task
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].CreateIndex > out[j].CreateIndex })
	return out, err
}

// Task returns one task by id.
func (f *FSM) Task(id string) (*structs.Task, error) {
	var t structs.Task
	var ok bool
	err := f.view(func(tx *bolt.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketTasks), id, &t)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, structs.NotFound("task", "task %q not found", id)
	}
	return &t, nil
}

// Events returns up to limit events with a sequence number greater than after.
func (f *FSM) Events(after uint64, limit int) ([]structs.Event, error) {
	var out []structs.Event
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(u64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var e structs.Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// LastEventSeq returns the sequence number of the newest event.
func (f *FSM) LastEventSeq() uint64 {
	var seq uint64
	_ = f.view(func(tx *bolt.Tx) error {
		seq = getU64(tx.Bucket(bucketMeta).Get([]byte("event_seq")))
		return nil
	})
	return seq
}

// Dump returns the whole state as plain values, for tests and debugging:
// two FSMs with equal dumps hold identical state.
func (f *FSM) Dump() (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	err := f.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			m := map[string]string{}
			out[string(name)] = m
			return b.ForEach(func(k, v []byte) error {
				m[string(k)] = string(v)
				return nil
			})
		})
	})
	return out, err
}

// NodeSecretHash returns the stored hash of a node's agent secret ("" if none).
func (f *FSM) NodeSecretHash(nodeID string) string {
	var h string
	_ = f.view(func(tx *bolt.Tx) error {
		h = string(tx.Bucket(bucketSecrets).Get([]byte(nodeID)))
		return nil
	})
	return h
}

// Alarms lists the recorded alarms (firing, and resolved not yet delivered).
func (f *FSM) Alarms() ([]AlarmRecord, error) {
	var out []AlarmRecord
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAlarms).ForEach(func(_, v []byte) error {
			var r AlarmRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
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
	_ = f.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketRequests).Get([]byte(reqID))
		if raw == nil {
			return nil
		}
		var rec applyRecord
		if json.Unmarshal(raw, &rec) != nil {
			return nil
		}
		seen, objectID = true, rec.ObjectID
		err = rec.refusal()
		return nil
	})
	return objectID, err, seen
}
