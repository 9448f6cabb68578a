package store

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestHandoverLifecycle(t *testing.T) {
	tests := []struct {
		name        string
		steps       func(s *Store) error
		wantRetired map[string]uint64
		wantOpen    map[string]Handover
		wantLogged  []structs.LocalMigration
	}{
		{name: "begun and not settled stays open",
			steps:       func(s *Store) error { return s.BeginHandover(Handover{VMID: idA, Generation: 10}) },
			wantRetired: map[string]uint64{},
			wantOpen:    map[string]Handover{idA: {VMID: idA, Generation: 10}}},
		{name: "retired: generation fenced, record cleared, nothing logged for an ordered migration",
			steps: func(s *Store) error {
				if err := s.BeginHandover(Handover{VMID: idA, Generation: 10}); err != nil {
					return err
				}
				return s.Retire(Handover{VMID: idA, Generation: 10})
			},
			wantRetired: map[string]uint64{idA: 10},
			wantOpen:    map[string]Handover{}},
		{name: "node-local migration is logged once, even when retired twice",
			steps: func(s *Store) error {
				h := Handover{VMID: idA, Generation: 10, ToAddr: "10.9.0.2"}
				if err := s.BeginHandover(h); err != nil {
					return err
				}
				if err := s.Retire(h); err != nil {
					return err
				}
				return s.Retire(h)
			},
			wantRetired: map[string]uint64{idA: 10},
			wantOpen:    map[string]Handover{},
			wantLogged:  []structs.LocalMigration{{VMID: idA, ToAddr: "10.9.0.2", Generation: 10}}},
		{name: "aborted: nothing fenced",
			steps: func(s *Store) error {
				if err := s.BeginHandover(Handover{VMID: idA, Generation: 10}); err != nil {
					return err
				}
				return s.AbortHandover(idA, 10)
			},
			wantRetired: map[string]uint64{},
			wantOpen:    map[string]Handover{}},
		{name: "abort of another generation keeps the record",
			steps: func(s *Store) error {
				if err := s.BeginHandover(Handover{VMID: idA, Generation: 12}); err != nil {
					return err
				}
				return s.AbortHandover(idA, 10)
			},
			wantRetired: map[string]uint64{},
			wantOpen:    map[string]Handover{idA: {VMID: idA, Generation: 12}}},
		{name: "the retired generation never goes down",
			steps: func(s *Store) error {
				if err := s.Retire(Handover{VMID: idB, Generation: 20}); err != nil {
					return err
				}
				return s.Retire(Handover{VMID: idB, Generation: 15})
			},
			wantRetired: map[string]uint64{idB: 20},
			wantOpen:    map[string]Handover{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTemp(t)
			if err := tt.steps(s); err != nil {
				t.Fatal(err)
			}
			retired, err := s.Retired()
			if err != nil || !reflect.DeepEqual(retired, tt.wantRetired) {
				t.Errorf("retired = %v, %v; want %v", retired, err, tt.wantRetired)
			}
			open, err := s.Handovers()
			if err != nil || !reflect.DeepEqual(open, tt.wantOpen) {
				t.Errorf("open hand-overs = %v, %v; want %v", open, err, tt.wantOpen)
			}
			logged, _, err := s.PendingMigrations()
			if err != nil || !reflect.DeepEqual(logged, tt.wantLogged) {
				t.Errorf("logged migrations = %v, %v; want %v", logged, err, tt.wantLogged)
			}
		})
	}
}

// TestClosedStoreFails: a store that cannot be used reports it on every
// fencing write and read; none pretends to have nothing recorded.
func TestClosedStoreFails(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	h := Handover{VMID: idA, Generation: 10}
	for name, call := range map[string]func() error{
		"BeginHandover":  func() error { return s.BeginHandover(h) },
		"Retire":         func() error { return s.Retire(h) },
		"AbortHandover":  func() error { return s.AbortHandover(idA, 10) },
		"AddAdoption":    func() error { return s.AddAdoption(Adoption{VMID: idA, Generation: 10}) },
		"RemoveAdoption": func() error { return s.RemoveAdoption(idA) },
		"AddMigration":   func() error { return s.AddMigration(structs.LocalMigration{VMID: idA}) },
		"StartDrain":     func() error { _, err := s.StartDrain("d1"); return err },
		"ReleaseDrain":   func() error { _, err := s.ReleaseDrain("d1"); return err },
		"Retired":        func() error { _, err := s.Retired(); return err },
		"Handovers":      func() error { _, err := s.Handovers(); return err },
		"Adoptions":      func() error { _, err := s.Adoptions(); return err },
		"DrainID":        func() error { _, err := s.DrainID(); return err },
		"SeenGeneration": func() error { _, err := s.SeenGeneration(idA); return err },
	} {
		if err := call(); err == nil {
			t.Errorf("%s on a closed store: no error", name)
		}
	}
}

func TestLocalDrainRecord(t *testing.T) {
	s := openTemp(t)
	id, err := s.StartDrain("d1")
	if err != nil || id != "d1" {
		t.Fatalf("first drain = %q, %v; want d1", id, err)
	}
	// A second drain while drained keeps the id the servers may release.
	if id, err := s.StartDrain("d2"); err != nil || id != "d1" {
		t.Fatalf("second drain = %q, %v; want d1", id, err)
	}
	if ok, err := s.ReleaseDrain("other"); err != nil || ok {
		t.Fatalf("release of another drain = %v, %v; want false", ok, err)
	}
	if on, _ := s.Drained(); !on {
		t.Fatal("drain flag cleared by the release of another drain")
	}
	if ok, err := s.ReleaseDrain("d1"); err != nil || !ok {
		t.Fatalf("release d1 = %v, %v; want true", ok, err)
	}
	on, err := s.Drained()
	id, err2 := s.DrainID()
	if on || id != "" || err != nil || err2 != nil {
		t.Fatalf("after release: drained %v id %q (%v, %v); want false, \"\"", on, id, err, err2)
	}
	if id, err := s.StartDrain("d3"); err != nil || id != "d3" {
		t.Fatalf("drain after a release = %q, %v; want a new id d3", id, err)
	}
}
