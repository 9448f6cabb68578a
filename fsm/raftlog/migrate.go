package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Chime before the WAL kept the log in raft.db's "logs" bucket. Open moves it in two steps
// that a crash can interrupt anywhere without losing or duplicating an entry:
//
//  1. migrateBuild, when raft-wal/ does not exist: the WAL is built in raft-wal.tmp/ (a copy
//     of the bucket's entries, fsynced), then renamed to raft-wal/ and the data dir fsynced.
//     A leftover raft-wal.tmp/ is an interrupted build: removed, and built again. A new data
//     dir gets an empty WAL the same way.
//  2. migrateFinish, with the WAL open: if raft.db still has the bucket, the rename was durable,
//     so the WAL holds the bucket's entries; the two last indexes are compared (a mismatch
//     is refused: the bucket was written after the move, by an older chime) and the bucket
//     deleted.
//
// Until step 2 the bucket is the log; after it, the WAL is.
const migrateBatch = 1024

// migrateBuild creates walDir if it does not exist, holding the entries of raft.db's logs
// bucket if there is one.
func (s *stableStore) migrateBuild(walDir string, opts WALOptions) error {
	tmp := walDir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove an interrupted raft wal build: %w", err)
	}
	if _, err := os.Stat(walDir); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	w, err := OpenWAL(tmp, opts)
	if err != nil {
		return err
	}
	copied, dropped, err := s.copyLegacyLogs(w)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, walDir)
	}
	if err == nil {
		err = syncDir(filepath.Dir(walDir))
	}
	if err != nil {
		return fmt.Errorf("move the raft log from %s to %s: %w", s.path, walDir, err)
	}
	if copied > 0 || dropped > 0 {
		opts.Logger.Info("moved the raft log out of raft.db into the wal", "from", s.path, "to", walDir, "entries", copied, "dropped_below_a_gap", dropped)
	}
	return nil
}

// copyLegacyLogs appends the logs bucket's entries to w (empty). The old store allowed gaps
// (raft left one after installing a snapshot); the WAL does not, so only the entries after
// the last gap are copied: those before it are older than the snapshot raft installed.
func (s *stableStore) copyLegacyLogs(w *WAL) (copied, dropped int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLogs)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, _ := c.Last()
		if k == nil {
			return nil
		}
		start, err := legacyIndex(k)
		if err != nil {
			return err
		}
		for k, _ = c.Prev(); k != nil; k, _ = c.Prev() {
			i, err := legacyIndex(k)
			if err != nil {
				return err
			}
			if i != start-1 {
				break
			}
			start = i
		}
		var batch []*raft.Log
		flush := func() error {
			if err := w.StoreLogs(batch); err != nil {
				return err
			}
			copied += len(batch)
			batch = batch[:0]
			return nil
		}
		total := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			total++
			i, err := legacyIndex(k)
			if err != nil {
				return err
			}
			if i < start {
				continue
			}
			l := new(raft.Log)
			if err := decodeLog(v, l); err != nil {
				return fmt.Errorf("log %d: %w", i, err)
			}
			if l.Index != i {
				return fmt.Errorf("log %d: record holds index %d", i, l.Index)
			}
			if batch = append(batch, l); len(batch) == migrateBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if len(batch) > 0 {
			if err := flush(); err != nil {
				return err
			}
		}
		dropped = total - copied
		return nil
	})
	return copied, dropped, err
}

func legacyIndex(k []byte) (uint64, error) {
	if len(k) != 8 {
		return 0, fmt.Errorf("corrupt log key %x: want 8 bytes", k)
	}
	return binary.BigEndian.Uint64(k), nil
}

// migrateFinish deletes raft.db's logs bucket once w, opened from the renamed directory,
// holds its entries.
func (s *stableStore) migrateFinish(w *WAL) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLogs)
		if b == nil {
			return nil
		}
		if k, _ := b.Cursor().Last(); k != nil {
			last, err := legacyIndex(k)
			if err != nil {
				return err
			}
			walLast, _ := w.LastIndex()
			if walLast != last {
				return fmt.Errorf("raft.db's logs bucket ends at index %d but %s at %d: was an older chime run on this data dir after the log moved to the wal? Refusing to guess which log is right", last, w.dir, walLast)
			}
		}
		return tx.DeleteBucket(bucketLogs)
	})
	if err != nil {
		return fmt.Errorf("finish moving the raft log out of %s: %w", s.path, err)
	}
	return nil
}
