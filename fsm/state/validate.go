package state

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	bolt "go.etcd.io/bbolt"
)

// requiredBuckets are in every state file any chime version wrote; the
// others came later and are created by Open when missing.
var requiredBuckets = [][]byte{bucketNodes, bucketVMs, bucketMeta}

// recordDecoders says, per bucket of JSON records, what each record must
// decode to.
var recordDecoders = map[string]func([]byte) error{
	string(bucketNodes):     decodeAs[structs.Node],
	string(bucketVMs):       decodeAs[structs.VM],
	string(bucketTasks):     decodeAs[structs.Task],
	string(bucketEvents):    decodeAs[structs.Event],
	string(bucketRequests):  decodeAs[Request],
	string(bucketAlarms):    decodeAs[AlarmRecord],
	string(bucketACLTokens): decodeAs[structs.ACLToken],
	string(bucketCluster):   decodeAs[structs.HAState],
	string(bucketIncidents): decodeAs[structs.Incident],
}

func decodeAs[T any](raw []byte) error {
	var v T
	return json.Unmarshal(raw, &v)
}

// ValidateFile checks, without changing it, that the file at path is a
// chime state file this version can serve: a bbolt file; only buckets of
// this schema (a bucket this version does not know means another schema
// version: refused); the required buckets present; the applied index in
// meta; every JSON record decodes. The error names the bucket and key.
func ValidateFile(path string) (err error) {
	// bbolt trusts its pages: some corruptions of a file it did not
	// write panic inside it instead of failing. A file being validated
	// is untrusted input (a snapshot upload), so a panic is its refusal:
	// recovered here for bolt.Open, and inside the read transaction for
	// the rest (so that the transaction is rolled back and Close does
	// not wait for it).
	defer refusePanic(&err)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("not a state file: %w", err)
	}
	defer db.Close()
	known := map[string]bool{}
	for _, b := range allBuckets {
		known[string(b)] = true
	}
	return db.View(func(tx *bolt.Tx) (err error) {
		defer refusePanic(&err)
		for _, b := range requiredBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("bucket %q missing", b)
			}
		}
		if raw := tx.Bucket(bucketMeta).Get(metaIndex); len(raw) != 8 {
			return fmt.Errorf("bucket %q: applied index missing or not 8 bytes", bucketMeta)
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if !known[string(name)] {
				return fmt.Errorf("bucket %q is not of this schema version (a newer chime, or not a chime snapshot)", name)
			}
			if b == nil {
				return fmt.Errorf("top-level key %q is not a bucket", name)
			}
			dec := recordDecoders[string(name)]
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return fmt.Errorf("bucket %q: key %q is a nested bucket", name, k)
				}
				if dec == nil {
					return nil
				}
				if err := dec(v); err != nil {
					return fmt.Errorf("bucket %q: record %q does not decode: %w", name, k, err)
				}
				return nil
			})
		})
	})
}

// refusePanic turns a panic of bbolt reading a corrupt file into the
// file's refusal.
func refusePanic(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("not a state file: bbolt could not read it: %v", r)
	}
}
