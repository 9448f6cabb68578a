package local

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

type fakeBackend struct {
	drainErr   error
	migrateErr error
	gotMigrate MigrateRequest
}

func (f *fakeBackend) Status(context.Context) Status {
	return Status{NodeID: "n1", Name: "hv1", Synced: true, VMs: []VM{{ID: "v1", Name: "web", State: StateUndefined, Generation: 4}}}
}

func (f *fakeBackend) Drain(context.Context) (DrainResult, error) {
	return DrainResult{DrainID: "d1", Stopped: []string{"chime-web"}}, f.drainErr
}

func (f *fakeBackend) Migrate(_ context.Context, req MigrateRequest) ([]MigrateResult, error) {
	f.gotMigrate = req
	if f.migrateErr != nil {
		return nil, f.migrateErr
	}
	return []MigrateResult{{VMID: req.UUID, Name: "chime-web", OK: true, Took: "1s"}}, nil
}

// serve runs Handler(b) on a fresh socket until the test ends.
func serve(t *testing.T, b Backend) string {
	t.Helper()
	// Unix socket paths are limited to ~108 bytes; TempDir may be long.
	dir, err := os.MkdirTemp("", "chime-local-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "agent.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(b), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return path
}

func TestSocketRoundTrip(t *testing.T) {
	b := &fakeBackend{}
	path := serve(t, b)
	ctx := context.Background()
	c := NewClient(path)

	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, %v; want 0600", fi.Mode(), err)
	}
	st, err := c.Status(ctx)
	if err != nil || !reflect.DeepEqual(*st, b.Status(ctx)) {
		t.Fatalf("status = %+v, %v", st, err)
	}
	dr, err := c.Drain(ctx)
	if err != nil || dr.DrainID != "d1" || !reflect.DeepEqual(dr.Stopped, []string{"chime-web"}) {
		t.Fatalf("drain = %+v, %v", dr, err)
	}
	req := MigrateRequest{Interface: "eth1", UUID: "v1", Dest: "10.1.0.2"}
	res, err := c.Migrate(ctx, req)
	if err != nil || len(res) != 1 || !res[0].OK || b.gotMigrate != req {
		t.Fatalf("migrate = %+v, %v; backend saw %+v", res, err, b.gotMigrate)
	}
}

func TestSocketErrors(t *testing.T) {
	tests := []struct {
		name       string
		backend    *fakeBackend
		call       func(c *Client) error
		wantStatus int
		wantMsg    string
	}{
		{name: "invalid migration request is a 400 naming the flag",
			backend: &fakeBackend{migrateErr: structs.Invalid("--dest", "%q is not an IP address", "x")},
			call: func(c *Client) error {
				_, err := c.Migrate(context.Background(), MigrateRequest{Dest: "x"})
				return err
			},
			wantStatus: http.StatusBadRequest, wantMsg: "--dest"},
		{name: "unknown vm is a 404",
			backend: &fakeBackend{migrateErr: structs.NotFound("--uuid", "no running chime VM v9 on this node")},
			call: func(c *Client) error {
				_, err := c.Migrate(context.Background(), MigrateRequest{UUID: "v9"})
				return err
			},
			wantStatus: http.StatusNotFound, wantMsg: "v9"},
		{name: "a failed drain is a 500 with its error",
			backend:    &fakeBackend{drainErr: errors.New("record local drain: disk full")},
			call:       func(c *Client) error { _, err := c.Drain(context.Background()); return err },
			wantStatus: http.StatusInternalServerError, wantMsg: "disk full"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewClient(serve(t, tt.backend))
			err := tt.call(c)
			var le *Error
			if !errors.As(err, &le) || le.Status != tt.wantStatus || !strings.Contains(le.Message, tt.wantMsg) {
				t.Fatalf("error = %v; want HTTP %d mentioning %q", err, tt.wantStatus, tt.wantMsg)
			}
		})
	}
}

func TestListenRefusesWhatIsInTheWay(t *testing.T) {
	dir, err := os.MkdirTemp("", "chime-local-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(file); err == nil {
		ln.Close()
		t.Fatal("listened over a regular file")
	}

	live := filepath.Join(dir, "live.sock")
	ln, err := Listen(live)
	if err != nil {
		t.Fatal(err)
	}
	if ln2, err := Listen(live); err == nil || !strings.Contains(err.Error(), "another agent") {
		if ln2 != nil {
			ln2.Close()
		}
		t.Fatalf("second listener on a live socket: %v; want refused", err)
	}
	// A socket file left by an agent that died is taken over.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(live); err != nil {
		t.Fatalf("no stale socket file to take over: %v", err)
	}
	next, err := Listen(live)
	if err != nil {
		t.Fatalf("listen over a stale socket file: %v", err)
	}
	next.Close()
}
