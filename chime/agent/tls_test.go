package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/chime/tlsconf/tlsconftest"
	"github.com/chime-ha/chime/integration/wait"
)

// newTLSFakeServers is newFakeServers behind mutual TLS that admits agent
// certificates only, presenting a server certificate.
func newTLSFakeServers(t *testing.T, log *callLog, m *tlsconf.Material) *fakeServers {
	f := &fakeServers{log: log, changed: make(chan struct{}), secret: "node-secret",
		desired: api.DesiredState{ManagementState: structs.NodeEnabled, Index: 100}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/agent/register", f.register)
	mux.HandleFunc("POST /v1/agent/heartbeat", f.heartbeat)
	mux.HandleFunc("GET /v1/agent/desired", f.desiredHandler)
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.TLS = m.ServerConfig(tlsconf.RoleAgent)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// An agent with TLS material registers with servers over mutual TLS; its
// API lets servers and agents of the cluster in and nobody else, and takes
// adoption announcements from agents only; its announcer dials agents only.
func TestAgentTLS(t *testing.T) {
	pki := tlsconftest.New(t)
	log := &callLog{}
	srv := newTLSFakeServers(t, log, pki.Material(t, "server", tlsconf.RoleServer, false))
	cfg := testConfig(t, srv.srv.URL)
	cfg.TLS = pki.Files(t, "hv1", tlsconf.RoleAgent, false)
	a := startAgent(t, cfg, newRecordingHV(log))
	wait.For(t, 10*time.Second, "registration over TLS", func() (bool, string) {
		_, n := srv.lastHeartbeat()
		return n > 0, strings.Join(log.snapshot(), "; ")
	})
	addr := a.APIAddr().String()
	ctx := context.Background()

	get := func(cfg *tls.Config, scheme string) (int, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
		resp, err := c.Get(scheme + addr + "/v1/ping")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var ping api.PingResponse
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&ping); err != nil || ping.NodeID != a.NodeID() {
				t.Errorf("ping answer %+v, %v", ping, err)
			}
		}
		return resp.StatusCode, nil
	}
	pingers := []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"server", pki.Material(t, "pinger-server", tlsconf.RoleServer, false).ClientConfig(tlsconf.RoleAgent), true},
		{"agent", pki.Material(t, "pinger-agent", tlsconf.RoleAgent, false).ClientConfig(tlsconf.RoleAgent), true},
		{"cli", pki.Material(t, "pinger-cli", tlsconf.RoleCLI, false).ClientConfig(tlsconf.RoleAgent), false},
		{"agent of another CA", pki.Material(t, "pinger-foreign", tlsconf.RoleAgent, true).ClientConfig(tlsconf.RoleAgent), false},
	}
	for _, p := range pingers {
		status, err := get(p.cfg, "https://")
		if p.ok && (err != nil || status != http.StatusOK) {
			t.Errorf("ping with a %s certificate: %d, %v; want 200", p.name, status, err)
		}
		if !p.ok && err == nil {
			t.Errorf("ping with a %s certificate answered %d, want the handshake refused", p.name, status)
		}
	}
	if status, err := get(nil, "http://"); err == nil && status == http.StatusOK {
		t.Error("plaintext ping answered 200")
	}

	// Adoption announcements: from a server certificate refused, from
	// another agent (through the production announcer) recorded.
	ad := store.Adoption{VMID: idA, Name: "a", Generation: 7, FromNode: "other"}
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	fromServer := newPeerClient(p, pki.Material(t, "announcer-server", tlsconf.RoleServer, false))
	if _, err := fromServer.AnnounceAdoption(ctx, "127.0.0.1", ad); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("adoption announced with a server certificate: %v, want HTTP 403", err)
	}
	if ads, err := a.store.Adoptions(); err != nil || len(ads) != 0 {
		t.Fatalf("adoptions after the refused announcement: %v, %v", ads, err)
	}
	fromAgent := newPeerClient(p, pki.Material(t, "announcer-agent", tlsconf.RoleAgent, false))
	if _, err := fromAgent.AnnounceAdoption(ctx, "127.0.0.1", ad); err != nil {
		t.Fatalf("adoption announced by an agent: %v", err)
	}
	if ads, err := a.store.Adoptions(); err != nil || ads[idA].Generation != 7 {
		t.Fatalf("adoptions after the agent's announcement: %v, %v", ads, err)
	}

	// The announcer wants an agent at the other end: the servers' listener
	// (a server certificate) is refused before anything is sent.
	_, sport, _ := net.SplitHostPort(strings.TrimPrefix(srv.srv.URL, "https://"))
	sp, _ := strconv.Atoi(sport)
	if _, err := newPeerClient(sp, a.tls).AnnounceAdoption(ctx, "127.0.0.1", ad); err == nil || !strings.Contains(err.Error(), "agent.global.chime") {
		t.Errorf("announcement to a server's listener: %v, want refused for not being agent.global.chime", err)
	}
}

func TestAgentTLSConfig(t *testing.T) {
	pki := tlsconftest.New(t)
	cfg := testConfig(t, "127.0.0.1:1")
	cfg.TLS = pki.Files(t, "a-server", tlsconf.RoleServer, false)
	if _, err := New(cfg, newRecordingHV(&callLog{})); err == nil || !strings.Contains(err.Error(), "--agent") {
		t.Fatalf("New with a server certificate: %v, want an error asking for an agent certificate", err)
	}
	cfg.TLS.KeyFile = ""
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--tls-key-file") {
		t.Fatalf("Validate without a key file: %v", err)
	}
}

// An agent without TLS (--insecure-no-tls) says so at start and every
// interval.
func TestAgentInsecureWarning(t *testing.T) {
	old := insecureWarnEvery
	insecureWarnEvery = 20 * time.Millisecond
	defer func() { insecureWarnEvery = old }()
	var mu sync.Mutex
	var buf strings.Builder
	out := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	a := &Agent{logger: hclog.New(&hclog.LoggerOptions{Output: out, Level: hclog.Warn})}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() { a.insecureLoop(done); close(finished) }()
	wait.For(t, 10*time.Second, "three warnings", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		n := strings.Count(buf.String(), "running without TLS")
		return n >= 3, fmt.Sprint(n)
	})
	close(done)
	<-finished
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
