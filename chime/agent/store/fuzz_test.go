package store

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/chime-ha/chime/chime/api"
)

// FuzzRecords writes a fuzzed record into every bucket of an agent's
// state (under a fuzzed key, and under each key of the meta bucket), then
// runs every reader and the writers that read first: a damaged or
// foreign record may be refused, never panic.
func FuzzRecords(f *testing.F) {
	f.Add([]byte("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"), []byte(`{"vm_id":"0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f","generation":3}`))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte(`{"vms":[{"id":"v","generation":2,"state":"running"}],"index":7}`))
	f.Add([]byte("k"), []byte{1, 2, 3})
	f.Add([]byte("k"), []byte(`null`))
	f.Add([]byte("k"), []byte(`{"vms":null,"x":[`))
	f.Fuzz(func(t *testing.T, key, value []byte) {
		if len(key) == 0 || len(key) > bolt.MaxKeySize {
			return
		}
		s, err := Open(filepath.Join(t.TempDir(), "agent.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		err = s.db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketMeta, bucketGenerations, bucketDefined, bucketMigrations,
				bucketRetired, bucketHandovers, bucketAdoptions} {
				if err := tx.Bucket(b).Put(key, value); err != nil {
					return err
				}
			}
			for _, k := range [][]byte{keyNodeID, keyHostUUID, keySecret, keyDrained, keyDrainID, keyDesired} {
				if err := tx.Bucket(bucketMeta).Put(k, value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		vm := string(key)
		_, _ = s.Desired()
		_, _ = s.SeenGeneration(vm)
		_, _ = s.DefinedSpecs()
		_, _, _ = s.PendingMigrations()
		_, _ = s.Handovers()
		_, _ = s.Retired()
		_, _ = s.Adoptions()
		_, _ = s.Drained()
		_, _ = s.DrainID()
		_, _ = s.Secret()
		_, _ = s.Identity("8b0f7a52-8f0b-4c4e-9f55-2c1b7a3c2d11")
		_, _, _, _ = s.AcceptDesired(api.DesiredState{VMs: []api.DesiredVM{{ID: vm, Generation: 1}}})
		_ = s.AckMigrations(1)
		_ = s.AckMigrationsApplied(nil)
		_ = s.ExpireAdoption(vm)
		_ = s.RemoveAdoption(vm)
		_, _ = s.StartDrain("d2")
		_, _ = s.ReleaseDrain(string(value))
	})
}
