package fsm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Buckets of the state file.
var (
	bucketNodes     = []byte("nodes")      // node id → structs.Node JSON
	bucketNodeNames = []byte("node_names") // node name → node id
	bucketVMs       = []byte("vms")        // vm id → structs.VM JSON
	bucketVMNames   = []byte("vm_names")   // vm name → vm id
	bucketVMsByNode = []byte("vms_by_node")
	bucketNodeIndex = []byte("node_vm_index") // node id → last index a VM placed there changed
	bucketTasks     = []byte("tasks")         // task id → structs.Task JSON
	bucketEvents    = []byte("events")        // seq (big endian) → structs.Event JSON
	bucketRequests  = []byte("requests")      // request id → applyRecord JSON
	bucketReqOrder  = []byte("request_order") // index (big endian) → request id, to prune
	bucketMeta      = []byte("meta")          // "index", "event_seq"
	bucketSecrets   = []byte("node_secrets")  // node id → sha256 hex of its agent's secret (never served)
	bucketAlarms    = []byte("alarms")        // fingerprint → AlarmRecord JSON: last transition and its delivery

	allBuckets = [][]byte{bucketNodes, bucketNodeNames, bucketVMs, bucketVMNames, bucketVMsByNode,
		bucketNodeIndex, bucketTasks, bucketEvents, bucketRequests, bucketReqOrder, bucketMeta, bucketSecrets, bucketAlarms}
)

// Retention limits keep the state file bounded.
const (
	MaxEvents   = 10000 // newest events kept
	MaxRequests = 20000 // newest request ids remembered for deduplication
)

// Result is what Apply returns to the proposer through raft.ApplyFuture.
type Result struct {
	Index     uint64 // Raft index the command applied at
	Err       error  // validation or conflict error; the state is unchanged when set
	ObjectID  string // id of the object created or changed
	Duplicate bool   // the request id was seen before: nothing applied again
}

// applyRecord is what is remembered per request id.
type applyRecord struct {
	Index    uint64 `json:"index"`
	ObjectID string `json:"object_id"`
	Err      string `json:"err,omitempty"`
	Kind     string `json:"kind,omitempty"` // structs.KindName of the refusal
	Field    string `json:"field,omitempty"`
	// Status is what records written before error kinds had names carried
	// (an HTTP status); read only to understand old snapshots.
	Status int `json:"status,omitempty"`
}

// refusal rebuilds the error a remembered request was refused with.
func (rec applyRecord) refusal() error {
	if rec.Err == "" {
		return nil
	}
	kind := structs.KindByName(rec.Kind)
	if kind == nil {
		kind = legacyStatusKinds[rec.Status]
	}
	return &structs.Error{Kind: kind, Field: rec.Field, Message: rec.Err}
}

var legacyStatusKinds = map[int]error{400: structs.ErrInvalid, 403: structs.ErrForbidden, 404: structs.ErrNotFound,
	409: structs.ErrConflict, 503: structs.ErrNoLeader}

// FSM is the replicated state machine. It implements raft.FSM; reads go
// straight to bbolt and may run concurrently with Apply.
type FSM struct {
	path string
	log  hclog.Logger

	mu sync.RWMutex // guards db replacement during Restore
	db *bolt.DB

	wmu     sync.Mutex    // guards index and changed
	index   uint64        // last applied index
	changed chan struct{} // closed and replaced after every apply
}

var _ raft.FSM = (*FSM)(nil)

// Open creates the FSM's state file at path, discarding any previous one:
// the state is rebuilt from the latest snapshot and the Raft log on start,
// which is why the file may be written without fsync.
func Open(path string, logger hclog.Logger) (*FSM, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("fsm dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove old state: %w", err)
	}
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	return &FSM{path: path, log: logger, db: db, changed: make(chan struct{})}, nil
}

func openDB(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: true, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init state: %w", err)
	}
	return db, nil
}

// Close closes the state file.
func (f *FSM) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.db.Close()
}

// Index returns the last applied Raft index.
func (f *FSM) Index() uint64 {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.index
}

// Changed returns a channel closed at the next apply after the call, and
// the index at the time of the call.
func (f *FSM) Changed() (<-chan struct{}, uint64) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.changed, f.index
}

func (f *FSM) notify(index uint64) {
	f.wmu.Lock()
	if index > f.index {
		f.index = index
	}
	close(f.changed)
	f.changed = make(chan struct{})
	f.wmu.Unlock()
}

// Apply applies one committed log entry. It is deterministic: everything it
// needs is in the entry.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		f.notify(l.Index)
		return &Result{Index: l.Index}
	}
	res := f.apply(l.Index, l.Data)
	f.notify(l.Index)
	return res
}

func (f *FSM) apply(index uint64, data []byte) *Result {
	var cmd Command
	if err := json.Unmarshal(data, &cmd); err != nil {
		// A command that cannot be decoded is skipped identically on every
		// server; it never reaches the log through our own proposers.
		f.log.Error("undecodable command", "index", index, "error", err)
		f.mu.RLock()
		_ = f.db.Update(func(tx *bolt.Tx) error { return putIndex(tx, index) })
		f.mu.RUnlock()
		return &Result{Index: index, Err: fmt.Errorf("decode command: %w", err)}
	}
	res := &Result{Index: index}
	f.mu.RLock()
	defer f.mu.RUnlock()
	err := f.db.Update(func(tx *bolt.Tx) error {
		if cmd.ID != "" {
			if raw := tx.Bucket(bucketRequests).Get([]byte(cmd.ID)); raw != nil {
				var rec applyRecord
				if err := json.Unmarshal(raw, &rec); err == nil {
					res.Duplicate, res.ObjectID = true, rec.ObjectID
					res.Err = rec.refusal()
				}
				return putIndex(tx, index)
			}
		}
		// The command runs in a nested "transaction": on error we must not
		// keep partial writes, so apply functions validate before writing.
		a := &applier{tx: tx, index: index, now: cmd.Time}
		objID, aerr := a.dispatch(cmd)
		res.ObjectID, res.Err = objID, aerr
		if aerr != nil {
			return errRollback
		}
		return a.finish(cmd.ID, objID)
	})
	if errors.Is(err, errRollback) {
		// Record the failed request and the index in a fresh transaction so
		// that a retry gets the same answer.
		_ = f.db.Update(func(tx *bolt.Tx) error {
			a := &applier{tx: tx, index: index, now: cmd.Time}
			return a.recordFailure(cmd.ID, res.Err)
		})
		return res
	}
	if err != nil {
		f.log.Error("apply failed", "index", index, "type", cmd.Type, "error", err)
		res.Err = fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	return res
}

var errRollback = errors.New("rollback")

func putIndex(tx *bolt.Tx, index uint64) error {
	return tx.Bucket(bucketMeta).Put([]byte("index"), u64(index))
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

// Snapshot returns a point-in-time copy of the state file.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return &snapshot{tx: tx}, nil
}

type snapshot struct{ tx *bolt.Tx }

// Persist streams the read transaction's view; Apply continues meanwhile.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.tx.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release ends the read transaction.
func (s *snapshot) Release() { _ = s.tx.Rollback() }

// Restore replaces the state with a snapshot (a bbolt file image).
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp := f.path + ".restore"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := io.Copy(out, rc); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("restore: copy: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	// Validate before replacing the live state.
	check, err := openDB(tmp)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: snapshot is not a valid state file: %w", err)
	}
	var idx uint64
	_ = check.View(func(tx *bolt.Tx) error { idx = getU64(tx.Bucket(bucketMeta).Get([]byte("index"))); return nil })
	check.Close()

	f.mu.Lock()
	if err := f.db.Close(); err != nil {
		f.mu.Unlock()
		return fmt.Errorf("restore: close: %w", err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		f.mu.Unlock()
		return fmt.Errorf("restore: rename: %w", err)
	}
	db, err := openDB(f.path)
	if err != nil {
		f.mu.Unlock()
		return fmt.Errorf("restore: reopen: %w", err)
	}
	f.db = db
	f.mu.Unlock()
	f.wmu.Lock()
	f.index = idx
	close(f.changed)
	f.changed = make(chan struct{})
	f.wmu.Unlock()
	return nil
}

// view runs a read transaction.
func (f *FSM) view(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.db.View(fn)
}
