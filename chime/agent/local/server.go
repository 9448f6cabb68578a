// Package local is the agent's unix socket API, the one `chime agent
// status|drain|migrate` talks to on the hypervisor itself: the server side
// (Handler, Listen) and its Client. It answers while the management network
// is down, and only the socket's owner (root) may use it.
package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/chime-ha/chime/chime/api"
)

// Status is GET /status on the local socket: what `chime agent status`
// shows, answerable while the management network is down.
type Status struct {
	NodeID           string        `json:"node_id"`
	Name             string        `json:"name"`
	Servers          ServerContact `json:"servers"`
	Registered       bool          `json:"registered"` // the servers accepted this process's registration and refused no credentials since
	Synced           bool          `json:"synced"`     // a desired state was received since this process started
	DesiredIndex     uint64        `json:"desired_index"`
	LibvirtConnected bool          `json:"libvirt_connected"`
	LocalDrained     bool          `json:"local_drained"`               // a local drain is on and every chime VM is stopped
	LocalDrainState  string        `json:"local_drain_state,omitempty"` // draining or drained while a local drain is on
	LastReconcile    time.Time     `json:"last_reconcile,omitzero"`
	ReconcileError   string        `json:"reconcile_error,omitempty"`
	VMs              []VM          `json:"vms"`
}

// ServerContact says whether the servers answer.
type ServerContact struct {
	Addrs       []string  `json:"addrs"`
	Reachable   bool      `json:"reachable"`
	LastContact time.Time `json:"last_contact,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
}

// VM is one VM as the agent sees it: desired here, present in libvirt with
// chime metadata, or both.
type VM struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	DesiredState string `json:"desired_state,omitempty"` // empty: not placed here (a stale copy)
	State        string `json:"state"`                   // libvirt state; "undefined" when libvirt has no domain
	Reason       string `json:"reason,omitempty"`
	Generation   uint64 `json:"generation"` // desired generation, else the domain's
	// StartRefused is set while libvirt refuses to start the VM because a
	// disk of it is locked by another qemu (on another host, on shared
	// storage): the agent retries with a growing delay, not on every pass.
	StartRefused *StartRefusal `json:"start_refused,omitempty"`
}

// StartRefusal describes a start refused for a locked disk.
type StartRefusal struct {
	Error    string    `json:"error"`    // libvirt's error of the last attempt
	Since    time.Time `json:"since"`    // first refusal in a row
	Attempts int       `json:"attempts"` // refusals in a row
	NextTry  time.Time `json:"next_try"` // the agent tries again then
}

// StateUndefined is VM.State for a desired VM libvirt does not know.
const StateUndefined = "undefined"

// DrainRequest is the body of POST /drain.
type DrainRequest struct{}

// DrainResult answers POST /drain.
type DrainResult struct {
	DrainID string   `json:"drain_id"`
	Stopped []string `json:"stopped"`           // chime domains no longer running
	Running []string `json:"running,omitempty"` // still running when the wait ended
}

// MigrateRequest is POST /migrate: a node-local live migration.
type MigrateRequest struct {
	Interface string `json:"interface"`
	UUID      string `json:"uuid,omitempty"`
	All       bool   `json:"all,omitempty"`
	Dest      string `json:"dest"`
}

// MigrateResult is one VM's outcome of a node-local migration.
type MigrateResult struct {
	VMID  string `json:"vm_id"`
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Took  string `json:"took,omitempty"`
	Error string `json:"error,omitempty"`
}

// Backend is what the socket serves; the agent implements it. Drain and
// Migrate block until the operation is done. Their errors carry a
// chime/structs kind (invalid, not found, conflict) that picks the HTTP
// status; any other error is a 500.
type Backend interface {
	Status(ctx context.Context) Status
	Drain(ctx context.Context) (DrainResult, error)
	Migrate(ctx context.Context, req MigrateRequest) ([]MigrateResult, error)
}

// Handler serves the local socket's routes from b.
func Handler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, b.Status(r.Context()))
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		res, err := b.Drain(r.Context())
		if err != nil {
			api.WriteJSON(w, http.StatusInternalServerError, &api.Error{Message: err.Error()})
			return
		}
		api.WriteJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		api.LimitBody(w, r, 64<<10, api.BodyReadTimeout)
		if err := api.DecodeBody(r.Body, &req); err != nil {
			e := api.AsError(err)
			api.WriteJSON(w, e.Status, e)
			return
		}
		res, err := b.Migrate(r.Context(), req)
		if err != nil {
			e := api.AsError(err)
			api.WriteJSON(w, e.Status, &api.Error{Message: e.Message})
			return
		}
		api.WriteJSON(w, http.StatusOK, res)
	})
	return mux
}

// Listen listens on a unix socket only its owner may use. A socket file
// left by a previous agent is removed; any other file in the way is not.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("no socket path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another agent is listening", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	// The umask makes the socket private from its creation on; chmod
	// states it explicitly.
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
