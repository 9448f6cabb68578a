package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var (
	bucketStable = []byte("stable") // raft's own keys (CurrentTerm, LastVoteTerm, ...) -> bytes
	bucketLogs   = []byte("logs")   // chime before the WAL: big-endian uint64 index -> encoded raft.Log
)

// errStableNotFound is what the StableStore returns for a missing key. hashicorp/raft compares
// err.Error() with the literal "not found" (api.go, raft.go), so the text must stay exactly that.
var errStableNotFound = errors.New("not found")

// stableStore is a raft.StableStore on raft.db's "stable" bucket. Every Set is a fsynced
// bbolt commit: raft writes here at term changes and votes only, and a vote that is
// acknowledged but lost on power failure breaks Raft's safety. The open bbolt file's flock
// is what keeps a second server off the data dir.
type stableStore struct {
	db   *bolt.DB
	path string // for error messages
}

func openStable(path string, timeout time.Duration) (*stableStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open raft stable store %s: file is locked by another process (is another chime server using this data dir?): %w", path, err)
		}
		return nil, fmt.Errorf("open raft stable store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketStable)
		return err
	})
	if err != nil {
		_ = db.Close() // the init error is the one worth reporting
		return nil, fmt.Errorf("open raft stable store %s: create bucket: %w", path, err)
	}
	return &stableStore{db: db, path: path}, nil
}

func (s *stableStore) close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close raft stable store %s: %w", s.path, err)
	}
	return nil
}

// Set stores val under key, fsynced.
func (s *stableStore) Set(key []byte, val []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStable).Put(key, val)
	})
	if err != nil {
		return fmt.Errorf("raft stable store %s: set %q: %w", s.path, key, err)
	}
	return nil
}

// Get returns a copy of the value under key. A missing key returns a nil value and an
// error whose text is exactly "not found", which raft checks for.
func (s *stableStore) Get(key []byte) ([]byte, error) {
	var val []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketStable).Get(key); v != nil {
			val = append([]byte{}, v...) // non-nil even for an empty value
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raft stable store %s: get %q: %w", s.path, key, err)
	}
	if val == nil {
		return nil, errStableNotFound
	}
	return val, nil
}

// SetUint64 stores val as 8 big-endian bytes.
func (s *stableStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 reads a value written by SetUint64. A missing key returns 0 and the
// "not found" error.
func (s *stableStore) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err // errStableNotFound must reach raft unwrapped
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft stable store %s: key %q holds %d bytes, want 8", s.path, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
