package state

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	bolt "go.etcd.io/bbolt"
)

// TestMovePlacementKeepsIndexesInStep: every move updates the placement
// index, wakes both nodes' agents and makes the index the new generation.
func TestMovePlacementKeepsIndexesInStep(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	at := func(index uint64, fn func(tx *Tx) error) {
		t.Helper()
		if err := db.Update(func(btx *bolt.Tx) error { return fn(Write(btx, index, time.Unix(int64(index), 0))) }); err != nil {
			t.Fatal(err)
		}
	}
	v := &structs.VM{ID: "vm-1", Name: "web"}
	at(1, func(tx *Tx) error { return tx.PutVM(v) })
	steps := []struct {
		index      uint64
		to         string
		adopt      uint64
		from       string // node whose agent must be woken too
		wantOn     map[string]int
		wantAdoptG uint64
	}{
		{2, "a", 0, "", map[string]int{"a": 1, "b": 0}, 0},
		{3, "b", 2, "a", map[string]int{"a": 0, "b": 1}, 2},
		{4, "", 0, "b", map[string]int{"a": 0, "b": 0}, 0},
	}
	for _, st := range steps {
		at(st.index, func(tx *Tx) error {
			cur, err := tx.VM(v.ID)
			if err != nil {
				return err
			}
			return tx.MovePlacement(cur, st.to, st.adopt)
		})
		if err := db.View(func(btx *bolt.Tx) error {
			tx := Read(btx)
			got, err := tx.VM(v.ID)
			if err != nil {
				return err
			}
			if got.NodeID != st.to || got.Generation != st.index || got.AdoptGeneration != st.wantAdoptG || got.ModifyIndex != st.index {
				t.Errorf("after move %d: node %q gen %d adopt %d modify %d", st.index, got.NodeID, got.Generation, got.AdoptGeneration, got.ModifyIndex)
			}
			for node, want := range st.wantOn {
				on, err := tx.VMsOnNode(node)
				if err != nil {
					return err
				}
				if len(on) != want || tx.HasVMsOnNode(node) != (want > 0) {
					t.Errorf("after move %d: node %s lists %d VMs, want %d", st.index, node, len(on), want)
				}
			}
			for _, node := range []string{st.to, st.from} {
				if node != "" && tx.NodeIndex(node) != st.index {
					t.Errorf("after move %d: node %s not woken (index %d)", st.index, node, tx.NodeIndex(node))
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
