// Package store is the agent's local state in <data-dir>/agent.db (bbolt):
// its identity, the last desired state and the fencing records that keep a
// generation from starting here again, the log of node-local migrations and
// the local drain flag. It survives restarts and power loss; every method is
// one transaction, so a record is either written whole or not at all.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
)

// Store is the agent's local state. Its methods are safe for concurrent use.
type Store struct {
	db *bolt.DB
}

var (
	bucketMeta        = []byte("meta")        // node_id, host_uuid, secret, drained, drain_id, desired
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

	keyNodeID = []byte("node_id")
	// keyHostUUID: libvirt's host UUID the node id was derived from
	// (absent in a state written by an older agent).
	keyHostUUID = []byte("host_uuid")
	keySecret   = []byte("secret")
	keyDrained  = []byte("drained")
	keyDrainID  = []byte("drain_id")
	keyDesired  = []byte("desired")
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

// ErrOtherHost is returned by Identity when the state was written on
// another host (a copied or restored data dir): its node id belongs to
// that host's node.
var ErrOtherHost = errors.New("the agent state belongs to another host")

// Identity returns the node id of this host (uniqueness rule 10,
// "identity is per host"). hostUUID is libvirt's host UUID ("" when
// libvirt could not tell). On first use the node id is the host UUID, so
// that an agent whose data dir was lost comes back as the same node; it is
// kept together with the host UUID it came from. A node id kept by an
// older agent (a random one, with no host UUID beside it) is kept as it is
// and the host UUID recorded. A state recorded for another host UUID is
// ErrOtherHost.
func (s *Store) Identity(hostUUID string) (string, error) {
	var id string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		stored, host := b.Get(keyNodeID), b.Get(keyHostUUID)
		switch {
		case stored != nil && host != nil && hostUUID != "" && string(host) != hostUUID:
			return fmt.Errorf("%w: it names node %s of host %s, and libvirt says this host is %s (a copied data dir? remove it to register this host as its own node)",
				ErrOtherHost, stored, host, hostUUID)
		case stored != nil:
			id = string(stored)
			if host == nil && hostUUID != "" {
				return b.Put(keyHostUUID, []byte(hostUUID))
			}
			return nil
		case hostUUID == "":
			return errors.New("a new data dir needs libvirt's host UUID, and libvirt did not give it")
		}
		if _, err := uuid.Parse(hostUUID); err != nil {
			return fmt.Errorf("host uuid %q: %w", hostUUID, err)
		}
		id = hostUUID
		if err := b.Put(keyHostUUID, []byte(hostUUID)); err != nil {
			return err
		}
		return b.Put(keyNodeID, []byte(id))
	})
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

// SetNodeID keeps id as the node id (an agent state written by an older
// agent, whose node id was random; tests).
func (s *Store) SetNodeID(id string) error {
	return s.putMeta(keyNodeID, []byte(id))
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
