package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/api"
)

// Status is GET /status on the local socket: what `chime agent status`
// shows, answerable while the management network is down.
type Status struct {
	NodeID           string        `json:"node_id"`
	Name             string        `json:"name"`
	Servers          ServerContact `json:"servers"`
	Synced           bool          `json:"synced"` // a desired state was received since this process started
	DesiredIndex     uint64        `json:"desired_index"`
	LibvirtConnected bool          `json:"libvirt_connected"`
	LocalDrained     bool          `json:"local_drained"`
	LastReconcile    time.Time     `json:"last_reconcile,omitzero"`
	ReconcileError   string        `json:"reconcile_error,omitempty"`
	VMs              []LocalVM     `json:"vms"`
}

// ServerContact says whether the servers answer.
type ServerContact struct {
	Addrs       []string  `json:"addrs"`
	Reachable   bool      `json:"reachable"`
	LastContact time.Time `json:"last_contact,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
}

// LocalVM is one VM as the agent sees it: desired here, present in
// libvirt with chime metadata, or both.
type LocalVM struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	DesiredState string `json:"desired_state,omitempty"` // empty: not placed here (a stale copy)
	State        string `json:"state"`                   // libvirt state; "undefined" when libvirt has no domain
	Reason       string `json:"reason,omitempty"`
	Generation   uint64 `json:"generation"` // desired generation, else the domain's
}

// StateUndefined is LocalVM.State for a desired VM libvirt does not know.
const StateUndefined = "undefined"

// Status assembles the local status. It asks libvirt afresh and falls back
// to the reconciler's last listing when libvirt does not answer.
func (a *Agent) Status(ctx context.Context) Status {
	domains, lastPass, passErr := a.rec.Domains()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if fresh, err := a.hv.List(lctx); err == nil {
		domains = fresh
	}
	cancel()
	a.mu.Lock()
	st := Status{
		NodeID: a.nodeID, Name: a.cfg.Name,
		Servers: ServerContact{
			Addrs:       a.client.Addrs(),
			Reachable:   !a.lastContact.IsZero() && a.contactErr == nil,
			LastContact: a.lastContact,
		},
		Synced:        a.desired != nil,
		LocalDrained:  a.drained,
		LastReconcile: lastPass,
		VMs:           []LocalVM{},
	}
	if a.contactErr != nil {
		st.Servers.LastError = a.contactErr.Error()
	}
	vms := map[string]*LocalVM{}
	if a.desired != nil {
		st.DesiredIndex = a.desired.Index
		for _, vm := range a.desired.VMs {
			vms[strings.ToLower(vm.ID)] = &LocalVM{ID: vm.ID, Name: vm.Name, DesiredState: vm.DesiredState,
				State: StateUndefined, Generation: vm.Generation}
		}
	}
	a.mu.Unlock()
	st.LibvirtConnected = a.hv.Connected()
	if passErr != nil {
		st.ReconcileError = passErr.Error()
	}
	for _, d := range domains {
		if d.Meta == nil {
			continue
		}
		v, ok := vms[strings.ToLower(d.UUID)]
		if !ok {
			v = &LocalVM{ID: d.UUID, Name: strings.TrimPrefix(d.Name, "chime-"), Generation: d.Meta.Generation}
			vms[strings.ToLower(d.UUID)] = v
		}
		v.State, v.Reason = d.State, d.Reason
	}
	for _, v := range vms {
		st.VMs = append(st.VMs, *v)
	}
	sort.Slice(st.VMs, func(i, j int) bool { return st.VMs[i].Name < st.VMs[j].Name })
	return st
}

// PingResponse is the answer to the servers' ping-back, GET /v1/ping.
type PingResponse struct {
	NodeID string `json:"node_id"`
	Name   string `json:"name"`
}

// apiHandler serves the agent API on the management network.
func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, PingResponse{NodeID: a.nodeID, Name: a.cfg.Name})
	})
	mux.HandleFunc("POST /v1/adopt", a.handleAdopt)
	return mux
}

// localHandler serves the local unix socket.
func (a *Agent) localHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status(r.Context()))
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.localDrain(r.Context())
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /migrate", func(w http.ResponseWriter, r *http.Request) {
		var req MigrateRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: "body: " + err.Error()})
			return
		}
		res, err := a.localMigrate(r.Context(), req)
		if err != nil {
			e := api.AsError(err)
			writeJSON(w, e.Status, errorBody{Error: e.Message})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	return mux
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// listenUnix listens on a unix socket only its owner may use. A socket file
// left by a previous agent is removed; any other file in the way is not.
func listenUnix(path string) (net.Listener, error) {
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
