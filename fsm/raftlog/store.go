// Package raftlog is the Raft log and stable store of a chime server's data dir: the log
// in append-only segment files with one fdatasync per append (wal.go, segment.go), raft's
// term and vote in a small bbolt file that also locks the data dir (stable.go). Open moves
// a log that an older chime kept in that bbolt file into the segments (migrate.go).
//
// It is here rather than raft-boltdb or raft-wal because those import go-metrics/compat,
// which the go-metrics that raft v1.8.0 and memberlist v0.7.0 require no longer has
// (fsm/DESIGN.md).
package raftlog

import (
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

const (
	// StableFile is the bbolt file of the stable store, in the data dir.
	StableFile = "raft.db"
	// WALDir is the directory of the log's segments, in the data dir.
	WALDir = "raft-wal"

	// openLockTimeout bounds how long Open waits for raft.db's file lock, so that a second
	// server started on the same data dir fails with a clear error instead of hanging.
	openLockTimeout = 5 * time.Second
)

// Store is a raft.LogStore (the WAL) and a raft.StableStore (raft.db) for one data dir.
// It is safe for concurrent use.
type Store struct {
	*WAL
	*stableStore
}

var (
	_ raft.LogStore          = (*Store)(nil)
	_ raft.StableStore       = (*Store)(nil)
	_ raft.MonotonicLogStore = (*Store)(nil)
)

// Open opens (creating if needed) the stores in dataDir, which must exist: raft.db, whose
// flock it holds (if another process holds it, Open gives up after 5 s with an error saying
// so), and the WAL in raft-wal/, recovered as OpenWAL says. A raft.db that still holds the
// log (chime before the WAL) has it moved into the WAL first. logger gets what recovery and
// the move did; nil discards it.
func Open(dataDir string, logger hclog.Logger) (*Store, error) {
	return open(dataDir, openLockTimeout, WALOptions{Logger: logger})
}

func open(dataDir string, lockTimeout time.Duration, opts WALOptions) (*Store, error) {
	opts = opts.withDefaults()
	stable, err := openStable(filepath.Join(dataDir, StableFile), lockTimeout)
	if err != nil {
		return nil, err
	}
	walDir := filepath.Join(dataDir, WALDir)
	if err := stable.migrateBuild(walDir, opts); err != nil {
		_ = stable.close() // the migration's error is the one worth reporting
		return nil, err
	}
	w, err := OpenWAL(walDir, opts)
	if err != nil {
		_ = stable.close()
		return nil, err
	}
	if err := stable.migrateFinish(w); err != nil {
		_ = w.Close()
		_ = stable.close()
		return nil, err
	}
	return &Store{WAL: w, stableStore: stable}, nil
}

// Close closes the WAL and raft.db. The store must not be used afterwards.
func (s *Store) Close() error {
	werr := s.WAL.Close()
	serr := s.stableStore.close()
	if werr != nil {
		return werr
	}
	return serr
}
