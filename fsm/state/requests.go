package state

import (
	"encoding/json"
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// Buckets of request records (deduplication of retried writes).
var (
	bucketRequests = []byte("requests")      // request id → Request JSON
	bucketReqOrder = []byte("request_order") // index (big endian) → request id, oldest first, to prune
)

// MaxRequests is how many of the newest request ids are remembered.
const MaxRequests = 20000

// Request is what is remembered of one applied request id: where it
// applied and what it answered.
type Request struct {
	Index    uint64 `json:"index"`
	ObjectID string `json:"object_id"`
	Err      string `json:"err,omitempty"`
	Kind     string `json:"kind,omitempty"` // structs.KindName of the refusal
	Field    string `json:"field,omitempty"`
	// Status is what records written before error kinds had names carried
	// (an HTTP status); read only to understand old snapshots.
	Status int `json:"status,omitempty"`
}

var legacyStatusKinds = map[int]error{400: structs.ErrInvalid, 403: structs.ErrForbidden, 404: structs.ErrNotFound,
	409: structs.ErrConflict, 503: structs.ErrNoLeader}

// Refusal rebuilds the error a remembered request was refused with (nil
// when it applied).
func (r Request) Refusal() error {
	if r.Err == "" {
		return nil
	}
	kind := structs.KindByName(r.Kind)
	if kind == nil {
		kind = legacyStatusKinds[r.Status]
	}
	return &structs.Error{Kind: kind, Field: r.Field, Message: r.Err}
}

// Request returns the record of a request id, or nil when it is not
// remembered.
func (t *Tx) Request(id string) (*Request, error) {
	raw := t.tx.Bucket(bucketRequests).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	var r Request
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("decode request record %q: %w", id, err)
	}
	return &r, nil
}

// RememberRequest records what request id answered at this index, and
// forgets the oldest record beyond MaxRequests (the count lives in meta,
// so that pruning costs O(1) per command). An empty id is not remembered.
func (t *Tx) RememberRequest(id string, r Request) error {
	if id == "" {
		return nil
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode request record: %w", err)
	}
	if err := t.tx.Bucket(bucketRequests).Put([]byte(id), raw); err != nil {
		return err
	}
	order := t.tx.Bucket(bucketReqOrder)
	if err := order.Put(u64(t.index), []byte(id)); err != nil {
		return err
	}
	n := t.metaCounter(metaRequestCount) + 1
	if n > MaxRequests {
		c := order.Cursor()
		if k, v := c.First(); k != nil {
			if err := t.tx.Bucket(bucketRequests).Delete(v); err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			n--
		}
	}
	return t.putMetaCounter(metaRequestCount, n)
}
