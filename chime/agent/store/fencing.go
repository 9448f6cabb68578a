package store

import (
	"encoding/json"
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
	bolt "go.etcd.io/bbolt"
)

// Fencing records. A generation of a VM that left this node by live
// migration must never be started here again: the copy runs elsewhere now.
// The record of a hand-over is written before libvirt is asked to migrate
// (BeginHandover) and settled after (Retire or AbortHandover), so that an
// agent that dies in between still knows the domain may have left.

// Handover is one live migration of a VM away from this node.
type Handover struct {
	VMID       string `json:"vm_id"`
	Generation uint64 `json:"generation"` // the generation that leaves
	// ToAddr is the destination of a node-local migration (`chime agent
	// migrate`), logged for the servers when the hand-over is retired; ""
	// for a migration the servers ordered (reported to them directly).
	ToAddr string `json:"to_addr,omitempty"`
	// FromNode and ToNode are the source's and the destination's node ids
	// of a node-local migration (ToNode as the destination's agent named
	// itself), and Outcome libvirt's outcome (structs.LocalMigration*),
	// logged with the entry. Empty ToNode: an entry without them, which
	// the servers record as an event only.
	FromNode string `json:"from_node,omitempty"`
	ToNode   string `json:"to_node,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
}

// LogEntry is the migration log entry of a node-local hand-over.
func (h Handover) LogEntry() structs.LocalMigration {
	m := structs.LocalMigration{VMID: h.VMID, ToAddr: h.ToAddr, Generation: h.Generation}
	if h.ToNode != "" {
		m.FromNode, m.ToNode, m.Outcome = h.FromNode, h.ToNode, h.Outcome
	}
	return m
}

// BeginHandover records that a live migration of h.VMID is about to start.
// Until it is settled, the agent treats the generation as possibly gone.
func (s *Store) BeginHandover(h Handover) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHandovers).Put([]byte(h.VMID), data) })
	if err != nil {
		return fmt.Errorf("record hand-over of %s: %w", h.VMID, err)
	}
	return nil
}

// Retire records, in one transaction, that the domain of h.VMID at
// h.Generation left this node: the VM's retired generation is raised to it,
// a hand-over record up to that generation is cleared, and a node-local
// migration (h.ToAddr set) is logged for the servers. Retiring a generation
// already retired changes nothing, so a retry logs no second migration.
func (s *Store) Retire(h Handover) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		ret, hos := tx.Bucket(bucketRetired), tx.Bucket(bucketHandovers)
		if v := hos.Get([]byte(h.VMID)); v != nil {
			var cur Handover
			if err := json.Unmarshal(v, &cur); err != nil || cur.Generation <= h.Generation {
				if err := hos.Delete([]byte(h.VMID)); err != nil {
					return err
				}
			}
		}
		if decodeUint(ret.Get([]byte(h.VMID))) >= h.Generation {
			return nil
		}
		if err := ret.Put([]byte(h.VMID), encodeUint(h.Generation)); err != nil {
			return err
		}
		if h.ToAddr == "" {
			return nil
		}
		return addMigration(tx, h.LogEntry())
	})
	if err != nil {
		return fmt.Errorf("record retired generation %d of %s: %w", h.Generation, h.VMID, err)
	}
	return nil
}

// AbortHandover clears the hand-over record of vmID at gen: the migration
// failed and the domain is still here.
func (s *Store) AbortHandover(vmID string, gen uint64) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHandovers)
		v := b.Get([]byte(vmID))
		if v == nil {
			return nil
		}
		var cur Handover
		if err := json.Unmarshal(v, &cur); err == nil && cur.Generation != gen {
			return nil // a record of another hand-over
		}
		return b.Delete([]byte(vmID))
	})
	if err != nil {
		return fmt.Errorf("clear hand-over record of %s: %w", vmID, err)
	}
	return nil
}

// Handovers returns the hand-overs begun and not settled, by VM id.
func (s *Store) Handovers() (map[string]Handover, error) {
	out := map[string]Handover{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHandovers).ForEach(func(k, v []byte) error {
			var h Handover
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("decode hand-over %s: %w", k, err)
			}
			out[string(k)] = h
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read hand-over records: %w", err)
	}
	return out, nil
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
	if err != nil {
		return nil, fmt.Errorf("read retired generations: %w", err)
	}
	return out, nil
}
