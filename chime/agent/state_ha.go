package agent

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Buckets of the HA operations' local state.
var (
	// bucketRetired: vm id → generation of the domain this node handed away
	// by live migration. A VM is never started here again at that
	// generation or an older one: the copy runs elsewhere now.
	bucketRetired = []byte("retired")
	// bucketAdoptions: vm id → JSON Adoption: a domain announced by a
	// node-local migration to this node, kept until the servers decide.
	bucketAdoptions = []byte("adoptions")

	keyDrainID = []byte("drain_id")
)

// Adoption is a domain another agent is live-migrating here without the
// servers (management network down).
type Adoption struct {
	VMID       string `json:"vm_id"`
	Name       string `json:"name"`
	Generation uint64 `json:"generation"`
	FromNode   string `json:"from_node"`
}

func (s *Store) ensureHABuckets() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRetired, bucketAdoptions} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

// SetRetired records that a VM's domain at generation gen left this node.
func (s *Store) SetRetired(vmID string, gen uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRetired)
		if decodeUint(b.Get([]byte(vmID))) >= gen {
			return nil
		}
		return b.Put([]byte(vmID), encodeUint(gen))
	})
}

// Retired returns every retired VM and its generation.
func (s *Store) Retired() (map[string]uint64, error) {
	out := map[string]uint64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRetired).ForEach(func(k, v []byte) error {
			out[string(k)] = decodeUint(v)
			return nil
		})
	})
	return out, err
}

// AddAdoption records an announced node-local migration to this node.
func (s *Store) AddAdoption(ad Adoption) error {
	data, err := json.Marshal(ad)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAdoptions).Put([]byte(ad.VMID), data) })
}

// Adoptions lists the announced adoptions.
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
	return out, err
}

// RemoveAdoption forgets an adoption (decided by the servers).
func (s *Store) RemoveAdoption(vmID string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAdoptions).Delete([]byte(vmID)) })
}

// DrainID returns the id of the current local drain ("" when none).
func (s *Store) DrainID() (string, error) {
	v, err := s.getMeta(keyDrainID)
	return string(v), err
}

// SetDrainID records the id of the current local drain.
func (s *Store) SetDrainID(id string) error { return s.putMeta(keyDrainID, []byte(id)) }
