// Package store is the agent's local state in <data-dir>/agent.db (bbolt):
// its identity, the last desired state and the fencing records that keep a
// generation from starting here again, the log of node-local migrations and
// the local drain flag. It survives restarts and power loss; every method is
// one transaction, so a record is either written whole or not at all.
package store

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
)

// Store is the agent's local state. Its methods are safe for concurrent use.
type Store struct {
	db *bolt.DB
}

var (
	bucketMeta        = []byte("meta")        // node_id, secret, drained, drain_id, desired
	bucketGenerations = []byte("generations") // vm id -> highest generation seen (uint64 BE)
	bucketDefined     = []byte("defined")     // vm id -> JSON DomainSpec last defined in libvirt
	bucketMigrations  = []byte("migrations")  // sequence (uint64 BE) -> JSON structs.LocalMigration not yet reported
	// bucketRetired: vm id → generation of the domain this node handed away
	// by live migration. A VM is never started here again at that
	// generation or an older one: the copy runs elsewhere now.
	bucketRetired = []byte("retired")
	// bucketHandovers: vm id → JSON Handover: a live migration from here
	// has begun and its outcome is not recorded yet.
	bucketHandovers = []byte("handovers")
	// bucketAdoptions: vm id → JSON Adoption: a domain announced by a
	// node-local migration to this node, kept until the servers decide.
	bucketAdoptions = []byte("adoptions")

	keyNodeID  = []byte("node_id")
	keySecret  = []byte("secret")
	keyDrained = []byte("drained")
	keyDrainID = []byte("drain_id")
	keyDesired = []byte("desired")
)

// Open opens (creating if needed) the store at path. It fails after a
// second when another process holds the file, which is how two agents on
// one data dir are refused.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open agent state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketGenerations, bucketDefined, bucketMigrations,
			bucketRetired, bucketHandovers, bucketAdoptions} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init agent state %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the store. Every later call fails.
func (s *Store) Close() error { return s.db.Close() }

// NodeID returns the node id, generating it from random (a version 4 UUID)
// and persisting it on first use. The agent passes crypto/rand, the
// simulator a seeded source.
func (s *Store) NodeID(random io.Reader) (string, error) {
	var id string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyNodeID); v != nil {
			id = string(v)
			return nil
		}
		u, err := uuid.NewRandomFromReader(random)
		if err != nil {
			return err
		}
		id = u.String()
		return b.Put(keyNodeID, []byte(id))
	})
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

// Secret returns the node secret issued at registration ("" before that).
func (s *Store) Secret() (string, error) {
	v, err := s.getMeta(keySecret)
	return string(v), err
}

// SetSecret persists the node secret.
func (s *Store) SetSecret(secret string) error {
	return s.putMeta(keySecret, []byte(secret))
}

func (s *Store) getMeta(key []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(key); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return out, nil
}

func (s *Store) putMeta(key, val []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(key, val) })
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

func encodeUint(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func decodeUint(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
