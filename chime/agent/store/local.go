package store

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	bolt "go.etcd.io/bbolt"
)

// The state of node-local operations (management network down): the log
// of migrations sent from here, the adoptions announced to here, and the
// local drain.

// AddMigration logs a node-local migration sent from here, to be reported
// in a heartbeat once the servers are reachable.
func (s *Store) AddMigration(m structs.LocalMigration) error {
	if err := s.db.Update(func(tx *bolt.Tx) error { return addMigration(tx, m) }); err != nil {
		return fmt.Errorf("log local migration of %s: %w", m.VMID, err)
	}
	return nil
}

func addMigration(tx *bolt.Tx, m structs.LocalMigration) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b := tx.Bucket(bucketMigrations)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	return b.Put(encodeUint(seq), data)
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

// AckMigrationsApplied deletes the logged migrations the servers acknowledged
// having applied: exactly the entries whose VM and generation are listed.
// An entry logged after the heartbeat was built stays.
func (s *Store) AckMigrationsApplied(applied []structs.AdoptionRef) error {
	if len(applied) == 0 {
		return nil
	}
	acked := map[structs.AdoptionRef]bool{}
	for _, r := range applied {
		acked[r] = true
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMigrations).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var m structs.LocalMigration
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode local migration %d: %w", decodeUint(k), err)
			}
			if acked[structs.AdoptionRef{VMID: m.VMID, Generation: m.Generation}] {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete acknowledged local migrations: %w", err)
	}
	return nil
}

// Adoption is a domain another agent is live-migrating here without the
// servers (management network down). It is also the body of the agent
// API's POST /v1/adopt, and of its answer (which adds ToNode).
type Adoption struct {
	VMID       string `json:"vm_id"`
	Name       string `json:"name"`
	Generation uint64 `json:"generation"`
	FromNode   string `json:"from_node"`
	// Proof is the source's structs.AdoptionProof for VMID and
	// Generation (empty from sources that predate it, or that never
	// registered): the destination reports it with its adoption.
	Proof string `json:"proof,omitempty"`
	// ToNode is the node id of the agent that accepted the announcement
	// (set in the answer; the source logs it as the destination).
	ToNode string `json:"to_node,omitempty"`
	// At is when this agent recorded the announcement (its clock); an
	// announcement whose domain has not arrived within the bound expires.
	At time.Time `json:"at,omitempty"`
	// Expired: the domain never arrived within the bound; the record holds
	// nothing and stays only until the servers acknowledge the expiry.
	Expired bool `json:"expired,omitempty"`
}

// ExpireAdoption marks the announced adoption of vmID expired (it holds
// nothing from now on) until the servers acknowledge it.
func (s *Store) ExpireAdoption(vmID string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAdoptions)
		v := b.Get([]byte(vmID))
		if v == nil {
			return nil
		}
		var ad Adoption
		if err := json.Unmarshal(v, &ad); err != nil {
			return fmt.Errorf("decode adoption %s: %w", vmID, err)
		}
		ad.Expired = true
		data, err := json.Marshal(ad)
		if err != nil {
			return err
		}
		return b.Put([]byte(vmID), data)
	})
	if err != nil {
		return fmt.Errorf("expire adoption of %s: %w", vmID, err)
	}
	return nil
}

// AddAdoption records an announced node-local migration to this node.
func (s *Store) AddAdoption(ad Adoption) error {
	data, err := json.Marshal(ad)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAdoptions).Put([]byte(ad.VMID), data) })
	if err != nil {
		return fmt.Errorf("record adoption of %s: %w", ad.VMID, err)
	}
	return nil
}

// Adoptions lists the announced adoptions by VM id.
func (s *Store) Adoptions() (map[string]Adoption, error) {
	out := map[string]Adoption{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAdoptions).ForEach(func(k, v []byte) error {
			var ad Adoption
			if err := json.Unmarshal(v, &ad); err != nil {
				return fmt.Errorf("decode adoption %s: %w", k, err)
			}
			out[string(k)] = ad
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read adoptions: %w", err)
	}
	return out, nil
}

// RemoveAdoption forgets an adoption (decided by the servers).
func (s *Store) RemoveAdoption(vmID string) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAdoptions).Delete([]byte(vmID)) })
	if err != nil {
		return fmt.Errorf("forget adoption of %s: %w", vmID, err)
	}
	return nil
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

// DrainID returns the id of the current local drain ("" when none).
func (s *Store) DrainID() (string, error) {
	v, err := s.getMeta(keyDrainID)
	return string(v), err
}

// StartDrain sets the local drain flag and returns the drain's id: the
// current one when a drain is already recorded, else newID. Flag and id
// are written together.
func (s *Store) StartDrain(newID string) (string, error) {
	id := newID
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyDrainID); len(v) > 0 {
			id = string(v)
		} else if err := b.Put(keyDrainID, []byte(id)); err != nil {
			return err
		}
		return b.Put(keyDrained, []byte("1"))
	})
	if err != nil {
		return "", fmt.Errorf("record local drain: %w", err)
	}
	return id, nil
}

// ReleaseDrain clears the local drain flag and its id when the current
// drain is id (released by the servers), in one transaction. It reports
// whether it released one.
func (s *Store) ReleaseDrain(id string) (bool, error) {
	released := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if id == "" || string(b.Get(keyDrainID)) != id {
			return nil
		}
		released = true
		if err := b.Delete(keyDrainID); err != nil {
			return err
		}
		return b.Put(keyDrained, []byte("0"))
	})
	if err != nil {
		return false, fmt.Errorf("release local drain %s: %w", id, err)
	}
	return released, nil
}
