package state

import (
	"encoding/json"
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// bucketIncidents holds id (big endian) → structs.Incident JSON.
var bucketIncidents = []byte("incidents")

// bucketIncidentKeys indexes incidents by what they are about →
// the incident's id (big endian): "n/<node id>" (an open node incident),
// "v/<vm id>" (each VM an open incident affects), "a/<fingerprint>" (a
// firing alarm, under the incident it fired in), "r/n/<node id>" and
// "r/v/<vm id>" (the incident that last resolved for them, which late
// audit records join). The FSM's incident tracker (fsm/incidents.go)
// names the keys.
var bucketIncidentKeys = []byte("incident_keys")

// Keys of bucketMeta for incidents.
var (
	metaIncidentSeq      = []byte("incident_seq")      // id of the newest incident
	metaIncidentResolved = []byte("incident_resolved") // resolved incidents kept
	metaIncidentIndex    = []byte("incident_index")    // Raft index of the last incident write
)

// MaxResolvedIncidents is how many resolved incidents the state keeps at
// most, whatever the leader's --incident-retention: the oldest beyond it
// are dropped when another resolves.
const MaxResolvedIncidents = 10000

// NodeIncidentKey and VMIncidentKey are the open-incident index's keys.
func NodeIncidentKey(nodeID string) string { return "n/" + nodeID }

// VMIncidentKey is the open-incident index's key of a VM.
func VMIncidentKey(vmID string) string { return "v/" + vmID }

// IndexedIncident returns the id of the incident indexed under key, or 0.
func (t *Tx) IndexedIncident(key string) uint64 {
	return getU64(t.tx.Bucket(bucketIncidentKeys).Get([]byte(key)))
}

// IndexIncident points key at incident id.
func (t *Tx) IndexIncident(key string, id uint64) error {
	return t.tx.Bucket(bucketIncidentKeys).Put([]byte(key), u64(id))
}

// UnindexIncident removes key from the incident index.
func (t *Tx) UnindexIncident(key string) error {
	return t.tx.Bucket(bucketIncidentKeys).Delete([]byte(key))
}

// NextIncidentID allocates the next incident id.
func (t *Tx) NextIncidentID() (uint64, error) {
	id := t.metaCounter(metaIncidentSeq) + 1
	return id, t.putMetaCounter(metaIncidentSeq, id)
}

// Incident returns one incident, or nil.
func (t *Tx) Incident(id uint64) (*structs.Incident, error) {
	var inc structs.Incident
	ok, err := getJSON(t.tx.Bucket(bucketIncidents), string(u64(id)), &inc)
	if err != nil || !ok {
		return nil, err
	}
	return &inc, nil
}

// PutIncident stores an incident stamped with the transaction's index.
// wasOpen says whether the stored copy was open: a transition to resolved
// counts it among the resolved ones.
func (t *Tx) PutIncident(inc *structs.Incident, wasOpen bool) error {
	if inc.ID == 0 {
		return fmt.Errorf("put incident: an incident without id")
	}
	inc.ModifyIndex = t.index
	if err := putJSON(t.tx.Bucket(bucketIncidents), string(u64(inc.ID)), inc); err != nil {
		return err
	}
	if wasOpen && inc.State == structs.IncidentResolved {
		if err := t.putMetaCounter(metaIncidentResolved, t.metaCounter(metaIncidentResolved)+1); err != nil {
			return err
		}
	}
	return t.putMetaCounter(metaIncidentIndex, t.index)
}

// Incidents lists incidents, newest first, that match keep (nil: all).
func (t *Tx) Incidents(keep func(*structs.Incident) bool) ([]structs.Incident, error) {
	var out []structs.Incident
	c := t.tx.Bucket(bucketIncidents).Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		var inc structs.Incident
		if err := json.Unmarshal(v, &inc); err != nil {
			return out, fmt.Errorf("decode incident %d: %w", getU64(k), err)
		}
		if keep == nil || keep(&inc) {
			out = append(out, inc)
		}
	}
	return out, nil
}

// ResolvedIncidents is how many resolved incidents are kept.
func (t *Tx) ResolvedIncidents() uint64 { return t.metaCounter(metaIncidentResolved) }

// IncidentIndex is the Raft index of the last incident write (blocking
// queries on the incident list wait on it).
func (t *Tx) IncidentIndex() uint64 { return t.metaCounter(metaIncidentIndex) }

// PruneIncidents deletes the oldest resolved incidents until at most keep
// remain; it returns how many it deleted. It walks from the oldest and
// stops as soon as enough are gone, so it reads the open incidents older
// than the last one it deletes and nothing newer.
func (t *Tx) PruneIncidents(keep uint64) (int, error) {
	resolved := t.metaCounter(metaIncidentResolved)
	if resolved <= keep {
		return 0, nil
	}
	b := t.tx.Bucket(bucketIncidents)
	var drop [][]byte
	c := b.Cursor()
	for k, v := c.First(); k != nil && resolved-uint64(len(drop)) > keep; k, v = c.Next() {
		var inc structs.Incident
		if err := json.Unmarshal(v, &inc); err != nil {
			return 0, fmt.Errorf("decode incident %d: %w", getU64(k), err)
		}
		if inc.State == structs.IncidentResolved {
			drop = append(drop, append([]byte(nil), k...))
		}
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	if len(drop) == 0 {
		return 0, nil
	}
	if err := t.putMetaCounter(metaIncidentResolved, resolved-uint64(len(drop))); err != nil {
		return 0, err
	}
	return len(drop), t.putMetaCounter(metaIncidentIndex, t.index)
}
