package state

import (
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// bucketAlarms holds fingerprint → AlarmRecord JSON: each alarm's last
// transition and whether it was delivered.
var bucketAlarms = []byte("alarms")

// AlarmRecord is the replicated state of one alarm: its last transition and
// whether that transition was delivered to the receivers. A new leader
// delivers what is recorded as undelivered, and nothing else, so each
// transition goes out once across leader changes (at least once when a
// leader dies between delivering and recording the delivery).
type AlarmRecord struct {
	Alarm     structs.Alarm `json:"alarm"`
	Delivered bool          `json:"delivered"`
}

// Alarm returns the record of one alarm, or nil when there is none.
func (t *Tx) Alarm(fingerprint string) (*AlarmRecord, error) {
	var rec AlarmRecord
	ok, err := getJSON(t.tx.Bucket(bucketAlarms), fingerprint, &rec)
	if err != nil || !ok {
		return nil, err
	}
	return &rec, nil
}

// Alarms lists the recorded alarms in fingerprint order.
func (t *Tx) Alarms() ([]AlarmRecord, error) {
	var out []AlarmRecord
	err := forEachJSON(t.tx.Bucket(bucketAlarms), func(r AlarmRecord) { out = append(out, r) })
	return out, err
}

// PutAlarm stores an alarm record under its fingerprint.
func (t *Tx) PutAlarm(rec AlarmRecord) error {
	if rec.Alarm.Fingerprint == "" {
		return fmt.Errorf("put alarm: an alarm without fingerprint")
	}
	return putJSON(t.tx.Bucket(bucketAlarms), rec.Alarm.Fingerprint, rec)
}

// DeleteAlarm forgets an alarm.
func (t *Tx) DeleteAlarm(fingerprint string) error {
	return t.tx.Bucket(bucketAlarms).Delete([]byte(fingerprint))
}
