package state

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chime-ha/chime/chime/structs"
)

// allBuckets is the schema: every bucket of the state file. Each entity's
// file declares its own; Open creates them all.
var allBuckets = [][]byte{bucketNodes, bucketNodeNames, bucketVMs, bucketVMNames, bucketVMsByNode,
	bucketNodeIndex, bucketTasks, bucketEvents, bucketRequests, bucketReqOrder, bucketMeta, bucketSecrets, bucketAlarms,
	bucketACLTokens, bucketACLHashes, bucketCluster, bucketIncidents, bucketIncidentKeys}

// Open opens (creating it and its buckets if needed) the state file at
// path. The file is opened without fsync: it is rebuilt from the Raft
// snapshot and log on every start, so a crash may lose its tail.
func Open(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: true, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("bucket %s: %w", b, err)
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init state %s: %w", path, err)
	}
	return db, nil
}

// Tx is the state as seen from one bbolt transaction. A write Tx carries
// the Raft index and the proposer's time of the command it applies, and
// stamps every record it writes with them: nothing here reads a clock.
type Tx struct {
	tx    *bolt.Tx
	index uint64
	now   time.Time
	// written journals the VMs and nodes this write transaction stored or
	// deleted, in order, for the FSM's derived view (fsm/view): applied
	// once the transaction commits, dropped when it rolls back.
	written []Written
	// appended journals the events this write transaction appended, as
	// stored (the FSM's incident tracker reads them before it commits).
	appended []structs.Event
}

// Written is one VM or node record a write transaction stored (VM or Node
// set) or deleted (Deleted, with the id in ID).
type Written struct {
	ID      string
	VM      *structs.VM   // the VM as stored
	Node    *structs.Node // the node as stored
	Deleted bool
	IsNode  bool
}

// Appended returns the events the transaction appended so far, in order.
func (t *Tx) Appended() []structs.Event { return t.appended }

// Written returns what the transaction stored or deleted so far, in order.
func (t *Tx) Written() []Written { return t.written }

func (t *Tx) journalVM(v *structs.VM) {
	c := *v
	t.written = append(t.written, Written{ID: v.ID, VM: &c})
}

func (t *Tx) journalNode(n *structs.Node) {
	c := *n
	t.written = append(t.written, Written{ID: n.ID, Node: &c, IsNode: true})
}

// Read wraps a read transaction. Its index and time are zero: use it only
// for reads.
func Read(tx *bolt.Tx) *Tx { return &Tx{tx: tx} }

// Write wraps the write transaction that applies the command at index,
// proposed at now.
func Write(tx *bolt.Tx, index uint64, now time.Time) *Tx { return &Tx{tx: tx, index: index, now: now} }

// Index is the Raft index of the command this transaction applies.
func (t *Tx) Index() uint64 { return t.index }

// Now is the proposer's clock reading carried by the command.
func (t *Tx) Now() time.Time { return t.now }

// Dump returns every bucket as plain strings (tests and debugging: two
// states with equal dumps are identical).
func (t *Tx) Dump() (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	err := t.tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		m := map[string]string{}
		out[string(name)] = m
		return b.ForEach(func(k, v []byte) error {
			m[string(k)] = string(v)
			return nil
		})
	})
	return out, err
}

// lookup finds an id in objects by full id, by name (through names), or
// as a prefix of ids; it returns the id on an exact match, else up to six
// ids the prefix matches.
func (t *Tx) lookup(ref string, objects, names []byte) (string, []string) {
	if t.tx.Bucket(objects).Get([]byte(ref)) != nil {
		return ref, nil
	}
	if v := t.tx.Bucket(names).Get([]byte(ref)); v != nil {
		return string(v), nil
	}
	var matches []string
	c := t.tx.Bucket(objects).Cursor()
	for k, _ := c.Seek([]byte(ref)); k != nil && strings.HasPrefix(string(k), ref); k, _ = c.Next() {
		matches = append(matches, string(k))
		if len(matches) > 5 {
			break
		}
	}
	return "", matches
}

// getJSON decodes the record under key into v; it reports whether there
// was one. A record that does not decode is an error: the file is corrupt.
func getJSON(b *bolt.Bucket, key string, v any) (bool, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("decode record %q: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put([]byte(key), raw)
}

// forEachJSON decodes every record of a bucket in key order.
func forEachJSON[T any](b *bolt.Bucket, fn func(T)) error {
	return b.ForEach(func(k, v []byte) error {
		var rec T
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decode record %q: %w", k, err)
		}
		fn(rec)
		return nil
	})
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
