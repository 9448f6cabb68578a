package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/state"
	"github.com/chime-ha/chime/fsm/view"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Retention limits keep the state file bounded.
const (
	MaxEvents   = state.MaxEvents   // newest events kept
	MaxRequests = state.MaxRequests // newest request ids remembered for deduplication
)

// Result is what Apply returns to the proposer through raft.ApplyFuture.
type Result struct {
	Index     uint64 // Raft index the command applied at
	Err       error  // a refusal (the state is unchanged), or the fatal error of a halted FSM
	ObjectID  string // id of the object created or changed
	Duplicate bool   // the request id was seen before: nothing applied again
	// Heartbeat is what a node.heartbeat command did with its adoption
	// claims (nil for other commands, and for a duplicate).
	Heartbeat *HeartbeatOutcome
}

// FSM is the replicated state machine. It implements raft.FSM; reads go
// straight to bbolt and may run concurrently with Apply.
type FSM struct {
	path string
	log  hclog.Logger

	mu sync.RWMutex // guards db replacement during Restore
	db *bolt.DB
	// view is the derived view (node usage, pending and held VMs): kept
	// by apply from what each committed transaction wrote, rebuilt on
	// Restore.
	derived *view.View

	wmu     sync.Mutex    // guards the fields below
	index   uint64        // last applied index
	changed chan struct{} // closed and replaced after every apply
	fatal   error         // why the FSM halted (nil while it runs)
	halted  chan struct{} // closed when the FSM halts
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
	db, err := state.Open(path)
	if err != nil {
		return nil, err
	}
	return &FSM{path: path, log: logger, db: db, derived: view.New(), changed: make(chan struct{}), halted: make(chan struct{})}, nil
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

// Halted returns a channel closed when the FSM stops applying: a log entry
// could not be applied the way every replica must apply it (an unknown
// command type not flagged ignorable, an undecodable entry or payload, a
// storage error). From then on Apply applies nothing, the applied index
// stays where it was, and every Apply returns Err. The owner must stop the
// server: a replica that skipped an entry would drift silently from the
// others.
func (f *FSM) Halted() <-chan struct{} { return f.halted }

// Err returns why the FSM halted, or nil while it runs.
func (f *FSM) Err() error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.fatal
}

func (f *FSM) halt(index uint64, err error) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.fatal == nil {
		f.fatal = fmt.Errorf("state machine halted at index %d: %w", index, err)
		f.log.Error("state machine halted: no further log entry is applied; stop this server and investigate",
			"index", index, "applied_index", f.index, "error", err)
		close(f.halted)
	}
	return f.fatal
}

// Apply applies one committed log entry. It is deterministic: everything it
// needs is in the entry.
func (f *FSM) Apply(l *raft.Log) any {
	if err := f.Err(); err != nil {
		return &Result{Index: l.Index, Err: err}
	}
	if l.Type != raft.LogCommand {
		f.notify(l.Index)
		return &Result{Index: l.Index}
	}
	res, fatal := f.apply(l.Index, l.Data)
	if fatal != nil {
		return &Result{Index: l.Index, Err: f.halt(l.Index, fatal)}
	}
	f.notify(l.Index)
	return res
}

// errRollback aborts the transaction of a refused command.
var errRollback = errors.New("rollback")

// apply applies one command and returns its result, or the fatal error
// that must halt the FSM. A refusal is a result, not a fatal error.
func (f *FSM) apply(index uint64, data []byte) (*Result, error) {
	var cmd Command
	if err := json.Unmarshal(data, &cmd); err != nil {
		return nil, fmt.Errorf("undecodable command envelope: %w", err)
	}
	apply, known := registry[cmd.Type]
	if !known {
		if !cmd.Ignorable {
			return nil, fmt.Errorf("unknown command type %q (written by a newer version?), not flagged ignorable", cmd.Type)
		}
		f.log.Warn("skipping a command of unknown type flagged ignorable", "index", index, "type", cmd.Type)
		if err := f.update(func(tx *bolt.Tx) error { return state.Write(tx, index, cmd.Time).PutAppliedIndex() }); err != nil {
			return nil, fmt.Errorf("skip %s: %w", cmd.Type, err)
		}
		return &Result{Index: index}, nil
	}
	var res *Result
	var refusal error
	var written []state.Written
	err := f.update(func(btx *bolt.Tx) (err error) {
		res, written, refusal, err = f.applyIn(btx, index, &cmd, apply)
		return err
	})
	if errors.Is(err, errRollback) {
		// Record the refusal and the index in a fresh transaction, so that
		// a retry gets the same answer.
		res.Err, res.ObjectID, res.Heartbeat = refusal, "", nil
		e := structs.AsError(refusal)
		if err := f.update(func(btx *bolt.Tx) error {
			tx := state.Write(btx, index, cmd.Time)
			if err := tx.PutAppliedIndex(); err != nil {
				return err
			}
			return tx.RememberRequest(cmd.ID, state.Request{Index: index, Err: e.Message, Kind: structs.KindName(refusal), Field: e.Field})
		}); err != nil {
			return nil, fmt.Errorf("record refusal of %s: %w", cmd.Type, err)
		}
		return res, nil
	}
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	f.derived.Apply(written) // committed: the derived view follows
	return res, nil
}

// applyIn applies one command of a known type at index inside the write
// transaction btx. It returns the result and what the transaction wrote
// for it (the derived view's input); errRollback, with the refusal, when
// the command was refused (the caller rolls back); any other error is a
// fault.
func (f *FSM) applyIn(btx *bolt.Tx, index uint64, cmd *Command, apply applyFunc) (*Result, []state.Written, error, error) {
	res := &Result{Index: index}
	tx := state.Write(btx, index, cmd.Time)
	if cmd.ID != "" {
		rec, err := tx.Request(cmd.ID)
		if err != nil {
			return res, nil, nil, err
		}
		if rec != nil {
			res.Duplicate, res.ObjectID, res.Err = true, rec.ObjectID, rec.Refusal()
			return res, nil, nil, tx.PutAppliedIndex()
		}
	}
	a := &applier{tx: tx, res: res, view: f.derived}
	objID, err := apply(a, cmd.Payload)
	if err != nil {
		if isRefusal(err) {
			// Partial writes vanish with the transaction; apply
			// functions check before they write all the same.
			return res, nil, err, errRollback
		}
		return res, nil, nil, err
	}
	res.ObjectID = objID
	if err := a.trackIncidents(); err != nil {
		return res, nil, nil, fmt.Errorf("incidents: %w", err)
	}
	if err := tx.PutAppliedIndex(); err != nil {
		return res, nil, nil, err
	}
	return res, tx.Written(), nil, tx.RememberRequest(cmd.ID, state.Request{Index: index, ObjectID: objID})
}

// isRefusal tells a refusal (an answer about the state, the same on every
// replica: not found, conflict) from a fault (storage, encoding).
func isRefusal(err error) bool {
	var e *structs.Error
	return errors.As(err, &e) && e.Kind != nil
}

func (f *FSM) update(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.db.Update(fn)
}

// view runs a read transaction.
func (f *FSM) view(fn func(tx *state.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.db.View(func(tx *bolt.Tx) error { return fn(state.Read(tx)) })
}

// Snapshot returns a point-in-time copy of the state file. A halted FSM
// refuses: its state is older than the index Raft would label it with.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
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

// Restore replaces the state with a snapshot (a bbolt file image). A
// halted FSM stays halted and refuses.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.Err(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
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
	if err := checkStateFile(tmp); err != nil { // snapcheck.go: before bbolt opens it for writing
		os.Remove(tmp)
		return fmt.Errorf("restore: snapshot is not a valid state file: %w", err)
	}
	// Schema, buckets and every record, read-only: a record that does not
	// decode must refuse the snapshot here, not after it replaced the
	// state (found by FuzzRestore).
	if err := state.ValidateFile(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: snapshot is not a valid state file: %w", err)
	}
	check, err := state.Open(tmp)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: snapshot is not a valid state file: %w", err)
	}
	var idx uint64
	err = check.View(func(tx *bolt.Tx) error { idx = state.Read(tx).AppliedIndex(); return nil })
	check.Close()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: read snapshot index: %w", err)
	}

	f.mu.Lock()
	if err := f.db.Close(); err != nil {
		f.mu.Unlock()
		return fmt.Errorf("restore: close: %w", err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		f.mu.Unlock()
		return fmt.Errorf("restore: rename: %w", err)
	}
	db, err := state.Open(f.path)
	if err != nil {
		f.mu.Unlock()
		return fmt.Errorf("restore: reopen: %w", err)
	}
	f.db = db
	err = db.View(func(tx *bolt.Tx) error { return f.derived.Rebuild(state.Read(tx)) })
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("restore: rebuild the derived view: %w", err)
	}
	f.wmu.Lock()
	f.index = idx
	close(f.changed)
	f.changed = make(chan struct{})
	f.wmu.Unlock()
	return nil
}

// ValidateSnapshotFile checks a snapshot file (a state file image) before
// it is handed to Raft: see state.ValidateFile.
func ValidateSnapshotFile(path string) error { return state.ValidateFile(path) }
