package agent

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/hypervisor"
	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
)

// Store is the agent's local state in <data-dir>/agent.db. It survives
// restarts and power loss so that a returning agent keeps its identity, its
// fencing tokens and the last desired state it was told.
type Store struct {
	db *bolt.DB
}

var (
	bucketMeta        = []byte("meta")        // node_id, secret, drained, desired
	bucketGenerations = []byte("generations") // vm id -> highest generation seen (uint64 BE)
	bucketDefined     = []byte("defined")     // vm id -> JSON DomainSpec last defined in libvirt
	bucketMigrations  = []byte("migrations")  // sequence (uint64 BE) -> JSON structs.LocalMigration not yet reported

	keyNodeID  = []byte("node_id")
	keySecret  = []byte("secret")
	keyDrained = []byte("drained")
	keyDesired = []byte("desired")
)

// OpenStore opens (creating if needed) the store at path. It fails after a
// second when another process holds the file, which is how two agents on
// one data dir are refused.
func OpenStore(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open agent state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketGenerations, bucketDefined, bucketMigrations} {
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

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// NodeID returns the node id, generating and persisting it on first use.
func (s *Store) NodeID() (string, error) {
	var id string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyNodeID); v != nil {
			id = string(v)
			return nil
		}
		id = uuid.NewString()
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

// Drained reports the local drain flag (`chime agent drain`).
func (s *Store) Drained() (bool, error) {
	v, err := s.getMeta(keyDrained)
	return string(v) == "1", err
}

// SetDrained sets or clears the local drain flag.
func (s *Store) SetDrained(on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	return s.putMeta(keyDrained, []byte(v))
}

// Desired returns the last desired state persisted, or nil when none.
func (s *Store) Desired() (*api.DesiredState, error) {
	v, err := s.getMeta(keyDesired)
	if err != nil || v == nil {
		return nil, err
	}
	var ds api.DesiredState
	if err := json.Unmarshal(v, &ds); err != nil {
		return nil, fmt.Errorf("decode persisted desired state: %w", err)
	}
	return &ds, nil
}

// AcceptDesired applies the fencing rule to a desired state from the
// servers and persists the result, in one transaction. A VM whose generation
// is older than the highest generation this agent has seen for it is
// refused: the previously persisted entry for it is kept when it carries that
// generation, otherwise the VM is left out and reported in hold so that the
// reconciler leaves its domain alone. Every accepted generation raises the
// VM's high-water mark.
func (s *Store) AcceptDesired(in api.DesiredState) (accepted api.DesiredState, refused []api.DesiredVM, hold []string, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, gens := tx.Bucket(bucketMeta), tx.Bucket(bucketGenerations)
		prev := map[string]api.DesiredVM{}
		if v := meta.Get(keyDesired); v != nil {
			var old api.DesiredState
			if err := json.Unmarshal(v, &old); err == nil {
				for _, vm := range old.VMs {
					prev[vm.ID] = vm
				}
			}
		}
		accepted = in
		accepted.VMs = make([]api.DesiredVM, 0, len(in.VMs))
		for _, vm := range in.VMs {
			seen := decodeUint(gens.Get([]byte(vm.ID)))
			if vm.Generation < seen {
				refused = append(refused, vm)
				if p, ok := prev[vm.ID]; ok && p.Generation == seen {
					accepted.VMs = append(accepted.VMs, p)
				} else {
					hold = append(hold, vm.ID)
				}
				continue
			}
			if vm.Generation > seen {
				if err := gens.Put([]byte(vm.ID), encodeUint(vm.Generation)); err != nil {
					return err
				}
			}
			accepted.VMs = append(accepted.VMs, vm)
		}
		data, err := json.Marshal(accepted)
		if err != nil {
			return err
		}
		return meta.Put(keyDesired, data)
	})
	if err != nil {
		return api.DesiredState{}, nil, nil, fmt.Errorf("persist desired state: %w", err)
	}
	return accepted, refused, hold, nil
}

// SeenGeneration returns the highest generation seen for a VM (0: none).
func (s *Store) SeenGeneration(vmID string) (uint64, error) {
	var g uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		g = decodeUint(tx.Bucket(bucketGenerations).Get([]byte(vmID)))
		return nil
	})
	return g, err
}

// DefinedSpecs returns the spec last defined in libvirt per VM id.
func (s *Store) DefinedSpecs() (map[string]hypervisor.DomainSpec, error) {
	out := map[string]hypervisor.DomainSpec{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDefined).ForEach(func(k, v []byte) error {
			var spec hypervisor.DomainSpec
			if err := json.Unmarshal(v, &spec); err != nil {
				return fmt.Errorf("decode defined spec of %s: %w", k, err)
			}
			out[string(k)] = spec
			return nil
		})
	})
	return out, err
}

// SetDefined records the spec just defined in libvirt.
func (s *Store) SetDefined(spec hypervisor.DomainSpec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDefined).Put([]byte(spec.VMID), data)
	})
}

// ForgetDefined drops the record of a VM's defined spec (after undefine).
func (s *Store) ForgetDefined(vmID string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDefined).Delete([]byte(vmID))
	})
}

// AddMigration logs a node-local migration sent from here, to be reported
// in a heartbeat once the servers are reachable.
func (s *Store) AddMigration(m structs.LocalMigration) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMigrations)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		return b.Put(encodeUint(seq), data)
	})
}

// PendingMigrations returns the unreported node-local migrations in order
// and the sequence of the last one, to pass to AckMigrations.
func (s *Store) PendingMigrations() ([]structs.LocalMigration, uint64, error) {
	var out []structs.LocalMigration
	var last uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMigrations).ForEach(func(k, v []byte) error {
			var m structs.LocalMigration
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode local migration %d: %w", decodeUint(k), err)
			}
			out = append(out, m)
			last = decodeUint(k)
			return nil
		})
	})
	return out, last, err
}

// AckMigrations deletes the logged migrations up to and including seq.
func (s *Store) AckMigrations(seq uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMigrations).Cursor()
		for k, _ := c.First(); k != nil && decodeUint(k) <= seq; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
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
