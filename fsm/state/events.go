package state

import (
	"encoding/json"
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// bucketEvents holds seq (big endian) → structs.Event JSON.
var bucketEvents = []byte("events")

// MaxEvents is how many of the newest events are kept.
const MaxEvents = 10000

// AppendEvent appends e with the next sequence number and the
// transaction's index (and time, unless e has one), and drops the event
// MaxEvents older.
func (t *Tx) AppendEvent(e structs.Event) error {
	seq := t.metaCounter(metaEventSeq) + 1
	if err := t.putMetaCounter(metaEventSeq, seq); err != nil {
		return err
	}
	e.Seq, e.Index = seq, t.index
	if e.Time.IsZero() {
		e.Time = t.now
	}
	b := t.tx.Bucket(bucketEvents)
	if err := putJSON(b, string(u64(seq)), e); err != nil {
		return err
	}
	t.appended = append(t.appended, e)
	if seq > MaxEvents {
		return b.Delete(u64(seq - MaxEvents))
	}
	return nil
}

// Events returns up to limit events with a sequence number greater than after.
func (t *Tx) Events(after uint64, limit int) ([]structs.Event, error) {
	var out []structs.Event
	c := t.tx.Bucket(bucketEvents).Cursor()
	for k, v := c.Seek(u64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
		var e structs.Event
		if err := json.Unmarshal(v, &e); err != nil {
			return out, fmt.Errorf("decode event %d: %w", getU64(k), err)
		}
		out = append(out, e)
	}
	return out, nil
}

// LastEventSeq returns the sequence number of the newest event.
func (t *Tx) LastEventSeq() uint64 { return t.metaCounter(metaEventSeq) }
