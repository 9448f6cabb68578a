package server

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// errWritten tells wrap that the handler wrote the answer itself.
var errWritten = errors.New("answer written")

type httpSink struct{ w http.ResponseWriter }

func (h *httpSink) Write(p []byte) (int, error) { return h.w.Write(p) }
func (h *httpSink) Close() error                { return nil }
func (h *httpSink) ID() string                  { return "http" }
func (h *httpSink) Cancel() error               { return nil }

func newBytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// validateSnapshot checks that b is a bbolt file with chime's buckets
// before it is handed to Raft, so that a wrong file is refused up front.
func validateSnapshot(b []byte) error {
	dir, err := os.MkdirTemp("", "chime-restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "check.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return err
	}
	db, err := bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true, Timeout: 0})
	if err != nil {
		return fmt.Errorf("not a state file: %w", err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		for _, name := range []string{"nodes", "vms", "meta"} {
			if tx.Bucket([]byte(name)) == nil {
				return fmt.Errorf("bucket %q missing", name)
			}
		}
		return nil
	})
}
