package state

import "github.com/chime-ha/chime/chime/structs"

// bucketCluster holds cluster-wide records, one key each: "ha" is the
// automatic-HA switch (structs.HAState).
var bucketCluster = []byte("cluster")

var keyHA = "ha"

// HA returns the automatic-HA switch; the zero value (armed, brake
// released) when it was never written.
func (t *Tx) HA() (structs.HAState, error) {
	var s structs.HAState
	b := t.tx.Bucket(bucketCluster)
	if b == nil { // a state file opened read-only before the bucket existed
		return s, nil
	}
	_, err := getJSON(b, keyHA, &s)
	return s, err
}

// PutHA stores the automatic-HA switch, stamped with the command's index.
func (t *Tx) PutHA(s structs.HAState) error {
	s.ModifyIndex = t.index
	return putJSON(t.tx.Bucket(bucketCluster), keyHA, s)
}
