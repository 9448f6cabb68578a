package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/api"

	bolt "go.etcd.io/bbolt"
)

// saveSnapshot fetches GET /v1/operator/snapshot.
func saveSnapshot(t *testing.T, base string) []byte {
	t.Helper()
	resp, err := http.Get(base + "/v1/operator/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("snapshot save: %d %v", resp.StatusCode, err)
	}
	return b
}

// editSnapshot returns a copy of snap changed by fn (a write transaction
// on the bbolt file).
func editSnapshot(t *testing.T, snap []byte, fn func(tx *bolt.Tx) error) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edit.db")
	if err := os.WriteFile(p, snap, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(p, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSnapshotRestoreRefusesBadSnapshotsAndChangesNothing(t *testing.T) {
	s, base := devServerWith(t, func(c *Config) { c.SnapshotMaxBytes = 1 << 20 })
	c := api.NewClient(base)
	ctx := context.Background()
	registerNode(t, c, "hv1")
	if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
	good := saveSnapshot(t, base)
	tests := []struct {
		name   string
		body   []byte
		status int
		want   string // in the message
	}{
		{"empty", nil, 400, "0 bytes"},
		{"too small", []byte("hello"), 400, "5 bytes"},
		{"not bbolt", bytes.Repeat([]byte{0xAB}, 64<<10), 400, "not a state file"},
		{"over the limit", bytes.Repeat([]byte{0}, 2<<20), 413, "--snapshot-max-bytes"},
		{"unknown bucket", editSnapshot(t, good, func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("from_the_future"))
			return err
		}), 400, `bucket "from_the_future" is not of this schema version`},
		{"bucket missing", editSnapshot(t, good, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("vms")) }), 400, `bucket "vms" missing`},
		{"no applied index", editSnapshot(t, good, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("index")) }), 400, "applied index"},
		{"record does not decode", editSnapshot(t, good, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("nodes")).Put([]byte("x"), []byte(`{"vcpus":"many"`))
		}), 400, `bucket "nodes": record "x" does not decode`},
		{"record of the wrong type", editSnapshot(t, good, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("vms")).Put([]byte("y"), []byte(`[1,2,3]`))
		}), 400, `bucket "vms": record "y"`},
	}
	before, _ := s.fsm.VMs()
	beforeNodes, _ := s.fsm.Nodes()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPut, base+"/v1/operator/snapshot", bytes.NewReader(tt.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, data)
			}
			var e api.Error
			if err := json.Unmarshal(data, &e); err != nil || e.Field != "body" || !strings.Contains(e.Message, tt.want) {
				t.Fatalf("error %q (field %q), want field body and %q", data, e.Field, tt.want)
			}
		})
	}
	after, _ := s.fsm.VMs()
	afterNodes, _ := s.fsm.Nodes()
	if !reflect.DeepEqual(before, after) || !reflect.DeepEqual(beforeNodes, afterNodes) {
		t.Fatal("refused snapshots changed the state")
	}
	left, _ := filepath.Glob(filepath.Join(s.cfg.DataDir, "snapshot-upload-*"))
	if len(left) > 0 {
		t.Fatalf("temporary upload files left behind: %v", left)
	}

	// The good snapshot restores: a VM created after it is gone again.
	if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "later", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/v1/operator/snapshot", bytes.NewReader(good))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("restore of a good snapshot: %d %s", resp.StatusCode, data)
	}
	restored, _ := s.fsm.VMs()
	if len(restored) != 1 || restored[0].Name != "web" {
		t.Fatalf("after restore the VMs are %+v, want only web", restored)
	}
}
