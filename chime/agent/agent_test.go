package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/agenttest"
	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
	"github.com/chime-ha/chime/integration/wait"
)

const (
	idA = agenttest.IDA
	idB = agenttest.IDB
	idC = agenttest.IDC
	idX = agenttest.IDX
)

var (
	dvm     = agenttest.DesiredVM
	dom     = agenttest.Domain
	foreign = agenttest.Foreign
)

// callLog is one ordered record of what both sides saw, so a test can
// check that a libvirt call happened before a request to the servers.
type callLog struct {
	mu      sync.Mutex
	entries []string
}

func (l *callLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, fmt.Sprintf(format, args...))
}

func (l *callLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries)
}

// first returns the index of the first entry with the prefix, or -1.
func (l *callLog) first(prefix string) int {
	for i, e := range l.snapshot() {
		if strings.HasPrefix(e, prefix) {
			return i
		}
	}
	return -1
}

// recordingHV is an in-memory Hypervisor that records the calls made to
// it. It tests the agent's ordering logic only; the real driver is tested
// against libvirt.
type recordingHV struct {
	log *callLog

	mu          sync.Mutex
	domains     map[string]hypervisor.Domain
	failDestroy map[string]int // uuid -> how many more Destroy calls fail
	events      chan hypervisor.Event
	hostUUID    string // "" testHostUUID
	hostErr     error  // HostUUID fails with it
}

// testHostUUID is the recording hypervisor's libvirt host UUID.
const testHostUUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

func newRecordingHV(log *callLog, domains ...hypervisor.Domain) *recordingHV {
	h := &recordingHV{log: log, domains: map[string]hypervisor.Domain{}, failDestroy: map[string]int{},
		events: make(chan hypervisor.Event, 16)}
	for _, d := range domains {
		h.domains[d.UUID] = d
	}
	return h
}

func (h *recordingHV) Connected() bool                            { return true }
func (h *recordingHV) Events() <-chan hypervisor.Event            { return h.events }
func (h *recordingHV) Capacity(context.Context) (int, int, error) { return 8, 16384, nil }
func (h *recordingHV) HostUUID(context.Context) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hostErr != nil {
		return "", h.hostErr
	}
	if h.hostUUID == "" {
		return testHostUUID, nil
	}
	return h.hostUUID, nil
}
func (h *recordingHV) Migrate(_ context.Context, id, _, _ string) error {
	h.log.add("hv:migrate %s", id)
	return errors.New("no")
}

func (h *recordingHV) List(context.Context) ([]hypervisor.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hypervisor.Domain
	for _, d := range h.domains {
		out = append(out, d)
	}
	return out, nil
}

func (h *recordingHV) Define(_ context.Context, s hypervisor.DomainSpec) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log.add("hv:define %s", s.VMID)
	d, ok := h.domains[s.VMID]
	if !ok {
		d = hypervisor.Domain{UUID: s.VMID, State: hypervisor.StateStopped}
	}
	d.Name, d.Meta = hypervisor.DomainName(s.Name), &hypervisor.Meta{VMID: s.VMID, Generation: s.Generation}
	h.domains[s.VMID] = d
	return nil
}

func (h *recordingHV) setState(id, state string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.domains[id]
	d.State = state
	h.domains[id] = d
}

func (h *recordingHV) state(id string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.domains[id]
	return d.State, ok
}

func (h *recordingHV) Start(_ context.Context, id string) error {
	h.log.add("hv:start %s", id)
	h.setState(id, hypervisor.StateRunning)
	return nil
}

func (h *recordingHV) Shutdown(_ context.Context, id string, _ time.Duration) error {
	h.log.add("hv:shutdown %s", id)
	h.setState(id, hypervisor.StateStopped)
	return nil
}

func (h *recordingHV) Destroy(_ context.Context, id string) error {
	h.mu.Lock()
	if h.failDestroy[id] > 0 {
		h.failDestroy[id]--
		h.mu.Unlock()
		h.log.add("hv:destroy-failed %s", id)
		return errors.New("injected destroy failure")
	}
	h.mu.Unlock()
	h.log.add("hv:destroy %s", id)
	h.setState(id, hypervisor.StateStopped)
	return nil
}

func (h *recordingHV) Undefine(_ context.Context, id string) error {
	h.log.add("hv:undefine %s", id)
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.domains, id)
	return nil
}

// fakeServers implements the three agent endpoints of the servers' API.
type fakeServers struct {
	log *callLog
	srv *httptest.Server

	mu         sync.Mutex
	desired    api.DesiredState
	changed    chan struct{} // closed and replaced on every desired change
	down       bool          // answer 500 to everything
	heartbeats []api.HeartbeatRequest
	secret     string
	// ackMigrations: answer every reported migration log entry as applied
	// (as the real servers do once the FSM applied it).
	ackMigrations bool
}

func newFakeServers(t *testing.T, log *callLog, vms ...api.DesiredVM) *fakeServers {
	f := &fakeServers{log: log, changed: make(chan struct{}), secret: "node-secret",
		desired: api.DesiredState{ManagementState: structs.NodeEnabled, VMs: vms, Index: 100}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/agent/register", f.register)
	mux.HandleFunc("POST /v1/agent/heartbeat", f.heartbeat)
	mux.HandleFunc("GET /v1/agent/desired", f.desiredHandler)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServers) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

func (f *fakeServers) isDown(w http.ResponseWriter) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		http.Error(w, `{"error":"injected outage"}`, http.StatusInternalServerError)
	}
	return f.down
}

func (f *fakeServers) setDesired(vms ...api.DesiredVM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.desired.VMs = vms
	f.desired.Index++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeServers) authorized(r *http.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return r.Header.Get(api.HeaderSecret) == f.secret && r.Header.Get(api.HeaderNode) != ""
}

func (f *fakeServers) register(w http.ResponseWriter, r *http.Request) {
	if f.isDown(w) {
		f.log.add("server:register-down")
		return
	}
	var req api.RegisterRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.ID == "" || req.VCPUs == 0 {
		http.Error(w, `{"error":"bad register"}`, http.StatusBadRequest)
		return
	}
	f.log.add("server:register %s", req.ID)
	f.mu.Lock()
	f.desired.NodeID = req.ID
	f.mu.Unlock()
	api.WriteJSON(w, http.StatusOK, api.RegisterResponse{NodeID: req.ID, Secret: f.secret,
		Timing: api.Timing{HeartbeatInterval: 30 * time.Millisecond, MissedHeartbeats: 3}})
}

func (f *fakeServers) heartbeat(w http.ResponseWriter, r *http.Request) {
	if f.isDown(w) {
		f.log.add("server:heartbeat-down")
		return
	}
	if !f.authorized(r) {
		http.Error(w, `{"error":"bad secret"}`, http.StatusForbidden)
		return
	}
	var hb api.HeartbeatRequest
	if err := json.NewDecoder(r.Body).Decode(&hb); err != nil {
		http.Error(w, `{"error":"bad heartbeat"}`, http.StatusBadRequest)
		return
	}
	f.log.add("server:heartbeat")
	f.mu.Lock()
	f.heartbeats = append(f.heartbeats, hb)
	resp := api.HeartbeatResponse{Timing: api.Timing{HeartbeatInterval: 30 * time.Millisecond, MissedHeartbeats: 3}}
	if f.ackMigrations {
		for _, m := range hb.Migrations {
			resp.AppliedMigrations = append(resp.AppliedMigrations, structs.AdoptionRef{VMID: m.VMID, Generation: m.Generation})
		}
	}
	f.mu.Unlock()
	api.WriteJSON(w, http.StatusOK, resp)
}

func (f *fakeServers) desiredHandler(w http.ResponseWriter, r *http.Request) {
	if f.isDown(w) {
		f.log.add("server:desired-down")
		return
	}
	if !f.authorized(r) {
		http.Error(w, `{"error":"bad secret"}`, http.StatusForbidden)
		return
	}
	index, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	f.mu.Lock()
	ch, cur := f.changed, f.desired.Index
	f.mu.Unlock()
	if index >= cur {
		// A short blocking query, so that tests see changes quickly.
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	ds := f.desired
	f.mu.Unlock()
	f.log.add("server:desired %d", ds.Index)
	api.WriteJSON(w, http.StatusOK, ds)
}

// heartbeatsSince returns the heartbeats received after the first n.
func (f *fakeServers) heartbeatsSince(n int) []api.HeartbeatRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.HeartbeatRequest(nil), f.heartbeats[min(n, len(f.heartbeats)):]...)
}

func (f *fakeServers) lastHeartbeat() (api.HeartbeatRequest, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.heartbeats) == 0 {
		return api.HeartbeatRequest{}, 0
	}
	return f.heartbeats[len(f.heartbeats)-1], len(f.heartbeats)
}

func testConfig(t *testing.T, servers ...string) Config {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Name, cfg.DataDir, cfg.Servers = "hv1", dir, servers
	cfg.Bind, cfg.Advertise, cfg.APIPort, cfg.GossipPort = "127.0.0.1", "127.0.0.1", 0, 0
	cfg.SweepInterval = 50 * time.Millisecond
	cfg.InsecureNoTLS = true // the fake servers are plaintext (tls_test.go runs TLS)
	cfg.InsecureNoGossipKey = true
	// Unix socket paths are limited to ~108 bytes; TempDir may be long.
	sockDir, err := os.MkdirTemp("", "chime-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg.Socket = filepath.Join(sockDir, "agent.sock")
	return cfg
}

// startAgent runs an agent until the test ends.
func startAgent(t *testing.T, cfg Config, hv Hypervisor) *Agent {
	t.Helper()
	a, err := New(cfg, hv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
		a.Close()
	})
	return a
}

// TestReturningAgentDestroysStaleCopiesBeforeFirstHeartbeat is the "node
// comes back" path: the agent finds a copy of a VM now placed elsewhere and
// an older-generation copy of one placed here; the first destroys fail. No
// heartbeat may reach the servers before both are gone, and the re-placed VM
// starts only after them.
func TestReturningAgentDestroysStaleCopiesBeforeFirstHeartbeat(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log,
		dom(idB, "b", hypervisor.StateRunning, 20), // placed elsewhere now
		dom(idA, "a", hypervisor.StateRunning, 10), // re-placed here at generation 12
	)
	hv.failDestroy[idB] = 2
	srv := newFakeServers(t, log, dvm(idA, "a", structs.DesiredRunning, 12))
	startAgent(t, testConfig(t, srv.srv.URL), hv)

	wait.For(t, 10*time.Second, "a heartbeat", func() (bool, string) {
		return log.first("server:heartbeat") >= 0, fmt.Sprint(log.snapshot())
	})
	entries := log.snapshot()
	hb := slices.Index(entries, "server:heartbeat")
	for _, want := range []string{"hv:destroy " + idB, "hv:undefine " + idB, "hv:destroy " + idA, "hv:undefine " + idA, "hv:start " + idA} {
		i := slices.Index(entries, want)
		if i < 0 || i > hb {
			t.Fatalf("%q at %d, first heartbeat at %d; log:\n%s", want, i, hb, strings.Join(entries, "\n"))
		}
	}
	if slices.Index(entries, "hv:destroy-failed "+idB) < 0 {
		t.Fatalf("injected destroy failure not exercised; log:\n%s", strings.Join(entries, "\n"))
	}
	start := slices.Index(entries, "hv:start "+idA)
	for i, e := range entries {
		if (strings.HasPrefix(e, "hv:destroy") || strings.HasPrefix(e, "hv:undefine")) && i > start {
			t.Fatalf("stale step %q at %d after the start at %d; log:\n%s", e, i, start, strings.Join(entries, "\n"))
		}
	}
	if _, ok := hv.state(idB); ok {
		t.Fatalf("stale copy %s still defined", idB)
	}
}

// TestNoStartBeforeFirstSync: a persisted desired state from a previous run
// says a VM should run and libvirt shows it crashed; while the servers are
// down the restarted agent starts nothing, and once they answer it does.
func TestNoStartBeforeFirstSync(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log, dom(idA, "a", hypervisor.StateCrashed, 10))
	srv := newFakeServers(t, log, dvm(idA, "a", structs.DesiredRunning, 10))
	cfg := testConfig(t, srv.srv.URL)

	// The previous run's state: registered, synced, VM A desired running.
	prev, err := store.Open(filepath.Join(cfg.DataDir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := prev.SetSecret("node-secret"); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := prev.AcceptDesired(api.DesiredState{Index: 90, VMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)}}); err != nil {
		t.Fatal(err)
	}
	prev.Close()

	srv.setDown(true)
	a := startAgent(t, cfg, hv)
	wait.For(t, 10*time.Second, "registration attempts while the servers are down", func() (bool, string) {
		return strings.Count(strings.Join(log.snapshot(), "\n"), "server:register-down") >= 2, fmt.Sprint(log.snapshot())
	})
	// Passes triggered now must not act.
	a.Reconciler().Trigger()
	if _, err := a.Reconciler().Pass(context.Background()); !errors.Is(err, reconcile.ErrNotSynced) {
		t.Fatalf("pass before first sync: %v, want ErrNotSynced", err)
	}
	if i := log.first("hv:"); i >= 0 {
		t.Fatalf("libvirt touched before the first sync: %v", log.snapshot())
	}

	srv.setDown(false)
	wait.For(t, 10*time.Second, "the crashed VM started after the sync", func() (bool, string) {
		return log.first("hv:start "+idA) >= 0, fmt.Sprint(log.snapshot())
	})
	sync, start := log.first("server:desired"), log.first("hv:start")
	if sync < 0 || sync > start {
		t.Fatalf("start at %d before first sync at %d: %v", start, sync, log.snapshot())
	}
}

// TestKeepsReconcilingWhileServersUnreachable: after the first sync, a VM
// that crashes while the servers are down is restarted from the persisted
// desired state.
func TestKeepsReconcilingWhileServersUnreachable(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log)
	srv := newFakeServers(t, log, dvm(idA, "a", structs.DesiredRunning, 10))
	startAgent(t, testConfig(t, srv.srv.URL), hv)
	wait.For(t, 10*time.Second, "vm running", func() (bool, string) {
		s, _ := hv.state(idA)
		return s == hypervisor.StateRunning, fmt.Sprint(log.snapshot())
	})

	srv.setDown(true)
	wait.For(t, 10*time.Second, "servers seen down", func() (bool, string) {
		return log.first("server:heartbeat-down") >= 0, fmt.Sprint(log.snapshot())
	})
	hv.setState(idA, hypervisor.StateCrashed)
	hv.events <- hypervisor.Event{Kind: hypervisor.EventLifecycle, UUID: idA, Detail: "stopped", Reason: "crashed", At: time.Now()}
	wait.For(t, 10*time.Second, "crashed vm restarted", func() (bool, string) {
		s, _ := hv.state(idA)
		return s == hypervisor.StateRunning, s
	})
	if n := strings.Count(strings.Join(log.snapshot(), "\n"), "hv:start "+idA); n != 2 {
		t.Fatalf("starts of A = %d, want 2; log: %v", n, log.snapshot())
	}
}

// TestDesiredChangesAndHeartbeatContent follows desired-state changes and
// checks what the heartbeats report.
func TestDesiredChangesAndHeartbeatContent(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log, foreign(idX, "not-ours", hypervisor.StateRunning))
	srv := newFakeServers(t, log, dvm(idA, "a", structs.DesiredRunning, 10))
	cfg := testConfig(t, srv.srv.URL)
	a := startAgent(t, cfg, hv)

	wait.For(t, 10*time.Second, "a heartbeat reporting A running", func() (bool, string) {
		hb, _ := srv.lastHeartbeat()
		return len(hb.VMs) == 1 && hb.VMs[0].VMID == idA && hb.VMs[0].State == structs.StateRunning && hb.VMs[0].Generation == 10, fmt.Sprint(hb)
	})
	hb, _ := srv.lastHeartbeat()
	if hb.NodeID != a.NodeID() || hb.LocalDrained || len(hb.Faults) != 0 {
		t.Fatalf("heartbeat = %+v", hb)
	}

	// Stop A, add B: A is shut down, B defined and started.
	srv.setDesired(dvm(idA, "a", structs.DesiredStopped, 10), dvm(idB, "b", structs.DesiredRunning, 20))
	wait.For(t, 10*time.Second, "A stopped and B running", func() (bool, string) {
		sa, _ := hv.state(idA)
		sb, _ := hv.state(idB)
		return sa == hypervisor.StateStopped && sb == hypervisor.StateRunning, fmt.Sprint(log.snapshot())
	})

	// An older-generation instruction for B is refused: B keeps running.
	srv.setDesired(dvm(idA, "a", structs.DesiredStopped, 10), dvm(idB, "b", structs.DesiredStopped, 19))
	wait.For(t, 10*time.Second, "refused instruction persisted", func() (bool, string) {
		st := a.Status(context.Background())
		return st.DesiredIndex == 102, fmt.Sprint(st)
	})
	if _, err := a.Reconciler().Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s, _ := hv.state(idB); s != hypervisor.StateRunning {
		t.Fatalf("B = %s after an older-generation stop; want running", s)
	}

	// A migration logged locally is reported in every heartbeat until the
	// servers say they applied it (uniqueness rule 7): an answer that does
	// not name it deletes nothing.
	if err := a.store.AddMigration(structs.LocalMigration{VMID: idC, ToAddr: "10.9.0.2", Generation: 5}); err != nil {
		t.Fatal(err)
	}
	_, before := srv.lastHeartbeat()
	wait.For(t, 10*time.Second, "migration reported twice", func() (bool, string) {
		n := 0
		for _, hb := range srv.heartbeatsSince(before) {
			if len(hb.Migrations) == 1 && hb.Migrations[0].VMID == idC {
				n++
			}
		}
		hb, _ := srv.lastHeartbeat()
		return n >= 2, fmt.Sprint(hb)
	})
	srv.mu.Lock()
	srv.ackMigrations = true
	srv.mu.Unlock()
	wait.For(t, 10*time.Second, "migration acknowledged", func() (bool, string) {
		m, _, _ := a.store.PendingMigrations()
		return len(m) == 0, fmt.Sprint(m)
	})

	if st, ok := hv.state(idX); !ok || st != hypervisor.StateRunning {
		t.Fatalf("foreign domain touched: %q, %v; log %v", st, ok, log.snapshot())
	}
	if secret, _ := a.store.Secret(); secret != "node-secret" {
		t.Fatalf("stored secret = %q", secret)
	}
}

// TestServerDrainKeepsVMsStopped: management_state drained stops every VM.
func TestServerDrainKeepsVMsStopped(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log, dom(idA, "a", hypervisor.StateRunning, 10))
	srv := newFakeServers(t, log, dvm(idA, "a", structs.DesiredRunning, 10))
	srv.mu.Lock()
	srv.desired.ManagementState = structs.NodeDrained
	srv.mu.Unlock()
	startAgent(t, testConfig(t, srv.srv.URL), hv)
	wait.For(t, 10*time.Second, "A shut down", func() (bool, string) {
		s, _ := hv.state(idA)
		return s == hypervisor.StateStopped, fmt.Sprint(log.snapshot())
	})
	if i := log.first("hv:start"); i >= 0 {
		t.Fatalf("started a VM on a drained node: %v", log.snapshot())
	}
}

func TestLocalSocketAndPing(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log)
	srv := newFakeServers(t, log, dvm(idA, "a", structs.DesiredRunning, 10))
	cfg := testConfig(t, srv.srv.URL)
	a := startAgent(t, cfg, hv)
	ctx := context.Background()

	lc := local.NewClient(cfg.Socket)
	var st *local.Status
	wait.For(t, 10*time.Second, "status with A running", func() (bool, string) {
		var err error
		st, err = lc.Status(ctx)
		return err == nil && len(st.VMs) == 1 && st.VMs[0].State == hypervisor.StateRunning && st.Servers.Reachable, fmt.Sprint(st, err)
	})
	if st.NodeID != a.NodeID() || st.Name != "hv1" || !st.Synced || !st.LibvirtConnected ||
		st.VMs[0].ID != idA || st.VMs[0].DesiredState != structs.DesiredRunning || st.VMs[0].Generation != 10 {
		t.Fatalf("status = %+v", st)
	}
	fi, err := os.Stat(cfg.Socket)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, %v; want 0600", fi.Mode(), err)
	}

	for _, tt := range []struct {
		req  local.MigrateRequest
		flag string
	}{
		{local.MigrateRequest{Interface: "chime-no-such-if0", All: true, Dest: "10.0.0.2"}, "--interface"},
		{local.MigrateRequest{Interface: "lo", All: true, Dest: "not-an-ip"}, "--dest"},
		{local.MigrateRequest{Interface: "lo", Dest: "127.0.0.2"}, "--uuid"},
		{local.MigrateRequest{Interface: "lo", All: true, Dest: "10.9.9.9"}, "--dest"}, // not on lo's network
	} {
		_, err := lc.Migrate(ctx, tt.req)
		var le *local.Error
		if !errors.As(err, &le) || le.Status != http.StatusBadRequest || !strings.Contains(le.Message, tt.flag) {
			t.Errorf("migrate %+v: %v, want a 400 naming %s", tt.req, err, tt.flag)
		}
	}

	resp, err := http.Get("http://" + a.APIAddr().String() + "/v1/ping")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ping api.PingResponse
	if err := json.NewDecoder(resp.Body).Decode(&ping); err != nil || ping.NodeID != a.NodeID() || ping.Name != "hv1" {
		t.Fatalf("ping = %+v, %v", ping, err)
	}
}

// TestUnreadableStateStartsNothing: once the local state cannot be read,
// the reconciler changes nothing (a fencing record it cannot read may be
// the one that forbids a start) and no heartbeat claims less than was
// recorded.
func TestUnreadableStateStartsNothing(t *testing.T) {
	log := &callLog{}
	hv := newRecordingHV(log, dom(idA, "a", hypervisor.StateStopped, 10))
	a, err := New(testConfig(t, "127.0.0.1:1"), hv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := context.Background()
	if err := a.acceptDesired(ctx, api.DesiredState{Index: 3, VMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)}}); err != nil {
		t.Fatal(err)
	}
	if err := a.store.Close(); err != nil { // the state file becomes unusable
		t.Fatal(err)
	}
	if _, err := a.Reconciler().Pass(ctx); !errors.Is(err, reconcile.ErrInputs) {
		t.Fatalf("pass with unreadable state: %v; want ErrInputs", err)
	}
	if i := log.first("hv:"); i >= 0 {
		t.Fatalf("libvirt changed with unreadable fencing records: %v", log.snapshot())
	}
	if _, _, err := a.BuildHeartbeat(ctx); err == nil {
		t.Fatal("heartbeat built from unreadable state")
	}
	if st := a.Status(ctx); !strings.Contains(st.ReconcileError, "inputs") {
		t.Fatalf("status reconcile error = %q; want the inputs failure shown", st.ReconcileError)
	}
}
