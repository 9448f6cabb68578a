package fsm

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestRestoreRefusesUndecodableRecordBeforeReplacing: a snapshot that
// Raft installs (no HTTP validation in front of it) whose record does not
// decode is refused and the live state stays as it was (found by
// FuzzRestore: the state was replaced and only the derived view's rebuild
// noticed).
func TestRestoreRefusesUndecodableRecordBeforeReplacing(t *testing.T) {
	h := newHarness(t)
	n := node("hv1")
	h.must("n", CmdRegisterNode, RegisterNode{Node: n})
	h.must("v", CmdCreateVM, CreateVM{VM: vm("web"), NodeID: n.ID})
	snapBytes := snapshotBytes(t, h.f)

	tests := []struct {
		name, bucket, key, value, want string
	}{
		{"vm with a NUL after a key", "vms", "1f9a7c0e-55aa-4c1b-9a0e-6d1b2c3d4e5f", "{\"id\"\x00:1}", `bucket "vms": record "1f9a7c0e-55aa-4c1b-9a0e-6d1b2c3d4e5f" does not decode`},
		{"node of the wrong type", "nodes", "x", `[1,2]`, `bucket "nodes": record "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "edit.db")
			if err := os.WriteFile(p, snapBytes, 0o600); err != nil {
				t.Fatal(err)
			}
			db, err := bolt.Open(p, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(tt.bucket)).Put([]byte(tt.key), []byte(tt.value)) }); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			bad, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			fm := newHarness(t)
			fm.must("n", CmdRegisterNode, RegisterNode{Node: node("other")})
			before, _ := fm.f.Dump()
			err = fm.f.Restore(io.NopCloser(bytes.NewReader(bad)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("restore: %v, want an error with %q", err, tt.want)
			}
			after, err := fm.f.Dump()
			if err != nil {
				t.Fatalf("FSM unreadable after a refused restore: %v", err)
			}
			if !reflect.DeepEqual(before, after) {
				t.Fatal("a refused restore changed the state")
			}
			if nodes, err := fm.f.Nodes(); err != nil || len(nodes) != 1 || nodes[0].Name != "other" {
				t.Fatalf("nodes after a refused restore: %+v, %v", nodes, err)
			}
		})
	}
}
