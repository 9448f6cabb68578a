package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/chime/tlsconf/tlsconftest"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// testPKI is the TLS fixture with the test bound in.
type testPKI struct {
	t testing.TB
	*tlsconftest.PKI
}

func newTestPKI(t testing.TB) *testPKI { return &testPKI{t: t, PKI: tlsconftest.New(t)} }

func (p *testPKI) files(name string, role tlsconf.Role, foreign bool) tlsconf.Files {
	p.t.Helper()
	return p.Files(p.t, name, role, foreign)
}

func (p *testPKI) material(name string, role tlsconf.Role, foreign bool) *tlsconf.Material {
	p.t.Helper()
	return p.Material(p.t, name, role, foreign)
}

// client is an API client with a certificate of role (or none).
func (p *testPKI) client(url, name string, role tlsconf.Role, foreign bool) *api.Client {
	c := api.NewClient(url)
	c.Retries = 0
	c.UseTLS(p.material(name, role, foreign).ClientConfig(tlsconf.RoleServer))
	return c
}

// newTLSDevServer starts one --dev server with TLS material.
func newTLSDevServer(t *testing.T, p *testPKI) *Server {
	t.Helper()
	return newTLSDevServerLog(t, p, hclog.New(&hclog.LoggerOptions{Name: "dev", Level: hclog.Error}))
}

// newTLSDevServerLog is newTLSDevServer logging to log.
func newTLSDevServerLog(t *testing.T, p *testPKI, log hclog.Logger) *Server {
	t.Helper()
	pp := ports.Free(t, "127.0.0.1", 3)
	cfg := DefaultConfig()
	cfg.Dev, cfg.Name, cfg.DataDir = true, "dev", t.TempDir()
	cfg.APIPort, cfg.RaftPort, cfg.GossipPort = pp[0], pp[1], pp[2]
	cfg.GossipProfile, cfg.RaftTimeScale = "local", 0.25
	cfg.TLS = p.files("dev-server", tlsconf.RoleServer, false)
	cfg.Logger = log
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = s.Shutdown() })
	wait.For(t, 20*time.Second, "the dev server leads", func() (bool, string) { return s.IsLeader(), string(s.raft.State().String()) })
	return s
}

// The API over TLS: a client with a certificate of the cluster CA gets in
// (any role), a plaintext client, one without a certificate and one with
// another CA's certificate do not, and none of them changes anything.
func TestTLSAPIRefusesPlaintextAndOtherCA(t *testing.T) {
	p := newTestPKI(t)
	s := newTLSDevServer(t, p)
	url := s.cfg.APIURL()
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("APIURL %s with TLS, want https", url)
	}
	ctx := context.Background()
	create := func(c *api.Client, name string) error {
		_, err := c.CreateVM(ctx, api.CreateVMRequest{Name: name, VCPUs: 1, Memory: 64})
		return err
	}
	plain := api.NewClient(strings.Replace(url, "https://", "http://", 1))
	plain.Retries = 0
	noCert := api.NewClient(url)
	noCert.Retries = 0
	cfg := p.material("nocert-ca", tlsconf.RoleCLI, false).ClientConfig(tlsconf.RoleServer)
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	noCert.UseTLS(cfg)
	refused := []struct {
		name string
		c    *api.Client
	}{
		{"plaintext", plain},
		{"no client certificate", noCert},
		{"cli certificate of another CA", p.client(url, "foreign-cli", tlsconf.RoleCLI, true)},
		{"server certificate of another CA", p.client(url, "foreign-server", tlsconf.RoleServer, true)},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			if err := create(r.c, "vm-"+strings.ReplaceAll(r.name, " ", "-")); err == nil {
				t.Fatal("create VM accepted")
			} else {
				t.Logf("refused: %v", err)
			}
		})
	}
	before := s.fsm.Index()
	if vms, err := s.fsm.VMs(); err != nil || len(vms) != 0 {
		t.Fatalf("%d VMs after the refused writes (%v), want 0", len(vms), err)
	}
	for _, role := range tlsconf.Roles {
		c := p.client(url, "ok-"+string(role), role, false)
		if err := create(c, "vm-by-"+string(role)); err != nil {
			t.Fatalf("create VM with a %s certificate of the cluster CA: %v", role, err)
		}
	}
	if s.fsm.Index() <= before {
		t.Fatalf("index %d did not move past %d after accepted writes", s.fsm.Index(), before)
	}
}

// A raw Raft RPC over plain TCP, and one over TLS with a certificate of
// the cluster CA that is not a server's, are refused by the transport and
// change nothing; the same RPC with a server certificate is answered.
//
// Each refusal is counted in chime_raft_refused_connections_total and
// logged as a warning naming the peer; none reaches Raft, so the transport
// logs no error.
func TestTLSRaftTransportRefusesUnauthenticatedRPC(t *testing.T) {
	p := newTestPKI(t)
	var logs lockedBuffer
	s := newTLSDevServerLog(t, p, hclog.New(&hclog.LoggerOptions{Name: "dev", Level: hclog.Warn, Output: &logs}))
	target := raft.ServerAddress(s.cfg.RaftAddr())
	term := func() uint64 {
		v, _ := strconv.ParseUint(s.raft.Stats()["term"], 10, 64)
		return v
	}
	termBefore := term()
	tlsTransport := func(name string, role tlsconf.Role, foreign bool) *raft.NetworkTransport {
		m := p.material(name, role, foreign)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		layer := newTLSStreamLayer(ln, ln.Addr(), m.ServerConfig(tlsconf.RoleServer), m.ClientConfig(tlsconf.RoleServer),
			newRefusedLog(hclog.NewNullLogger(), newMetrics().raftRefused))
		// The agent's and CLI's certificates cannot serve as TLS client
		// certificates of a server dial in production; here they are sent
		// on purpose.
		return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: layer, MaxPool: 1, Timeout: 3 * time.Second,
			Logger: hclog.NewNullLogger()})
	}
	plain, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, 3*time.Second, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		trans   *raft.NetworkTransport
		refused bool
	}{
		{"plain TCP", plain, true},
		{"TLS with an agent certificate", tlsTransport("rpc-agent", tlsconf.RoleAgent, false), true},
		{"TLS with a cli certificate", tlsTransport("rpc-cli", tlsconf.RoleCLI, false), true},
		{"TLS with a server certificate of another CA", tlsTransport("rpc-foreign", tlsconf.RoleServer, true), true},
		{"TLS with a server certificate (control)", tlsTransport("rpc-server", tlsconf.RoleServer, false), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.trans.Close()
			// A vote request with a huge term: accepted, it would make
			// the server step down and adopt the term. The control asks
			// with term 0, which is answered and changes nothing.
			req := &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte(tt.trans.LocalAddr())},
				Term: termBefore + 1000, LastLogIndex: 1 << 40, LastLogTerm: termBefore + 1000}
			if !tt.refused {
				req.Term, req.LastLogIndex, req.LastLogTerm = 0, 0, 0
			}
			var resp raft.RequestVoteResponse
			err := tt.trans.RequestVote("dev", target, req, &resp)
			if tt.refused && err == nil {
				t.Fatalf("RequestVote answered (granted=%v term=%d), want refused", resp.Granted, resp.Term)
			}
			if !tt.refused && err != nil {
				t.Fatalf("RequestVote with a server certificate: %v", err)
			}
			if !tt.refused && resp.Term != termBefore {
				t.Fatalf("control answer carries term %d, want the server's %d", resp.Term, termBefore)
			}
			t.Logf("err=%v", err)
		})
	}
	if got := term(); got != termBefore {
		t.Fatalf("server term %d after the refused RPCs, want %d", got, termBefore)
	}
	if !s.IsLeader() {
		t.Fatal("the server lost leadership")
	}
	// Four refused (each RequestVote dials once); the handshakes fail on
	// the server's side in their own goroutines, so wait for the count.
	refused := func() float64 { return counterValue(s.met.raftRefused.WithLabelValues(refusedHandshake)) }
	wait.For(t, 10*time.Second, "four refused Raft connections counted", func() (bool, string) {
		return refused() >= 4, fmt.Sprint(refused())
	})
	out := logs.String()
	t.Logf("refused connections counted: %v; log:\n%s", refused(), out)
	if n := strings.Count(out, "refused a Raft connection"); n != 1 {
		t.Errorf("%d warnings of refused Raft connections from one host, want 1 (rate-limited)", n)
	}
	if !strings.Contains(out, "[WARN]") || !strings.Contains(out, "peer=127.0.0.1:") {
		t.Errorf("no warning naming the peer's address in the log")
	}
	if strings.Contains(out, "[ERROR]") {
		t.Errorf("the refusals were logged as errors:\n%s", out)
	}
}

// counterValue reads a counter.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// lockedBuffer is a log output several goroutines write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRefusedLogRateLimit: the first refusal from a host is logged, the
// next ones within a minute only counted, and the next log line carries
// how many were left out; another host is logged on its own.
func TestRefusedLogRateLimit(t *testing.T) {
	var out lockedBuffer
	m := newMetrics()
	r := newRefusedLog(hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: &out}), m.raftRefused)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 9), Port: 40000}
	b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 10), Port: 40000}
	for i := 0; i < 5; i++ {
		a.Port++
		r.note(a, refusedHandshake, fmt.Errorf("tls: bad certificate"))
	}
	r.note(b, refusedBusy, fmt.Errorf("busy"))
	now = now.Add(refusedLogEvery)
	r.note(a, refusedHandshake, fmt.Errorf("tls: bad certificate"))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3 (10.0.0.9 first, 10.0.0.10, 10.0.0.9 a minute later):\n%s", len(lines), out.String())
	}
	if !strings.Contains(lines[0], "peer=10.0.0.9:40001") || !strings.Contains(lines[1], "peer=10.0.0.10:") ||
		!strings.Contains(lines[2], "suppressed=4") {
		t.Errorf("log lines:\n%s", out.String())
	}
	if got := counterValue(m.raftRefused.WithLabelValues(refusedHandshake)); got != 6 {
		t.Errorf("handshake refusals counted %v, want 6", got)
	}
	if got := counterValue(m.raftRefused.WithLabelValues(refusedBusy)); got != 1 {
		t.Errorf("busy refusals counted %v, want 1", got)
	}
}

// Three servers form a Raft cluster over TLS; a follower forwards a CLI's
// write to the leader over TLS; a server that gossip announces but that has
// no server certificate never becomes a voter, while one that has joins.
func TestTLSThreeServerClusterAndRogueServer(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.Name, Level: hclog.Error})
	})
	p := tc.pki
	l := tc.leader(30 * time.Second)
	f := (l + 1) % 3
	ctx := context.Background()
	c := p.client(tc.cfgs[f].APIURL(), "cli", tlsconf.RoleCLI, false)
	c.Token = tc.token // the follower forwards it to the leader, which checks it
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "through-follower", VCPUs: 1, Memory: 64})
	if err != nil {
		t.Fatalf("create through follower %s: %v", tc.cfgs[f].Name, err)
	}
	wait.For(t, 10*time.Second, "the VM on every server", func() (bool, string) {
		n := 0
		for _, s := range tc.srv {
			if got, err := s.fsm.VM(vm.ID); err == nil && got != nil {
				n++
			}
		}
		return n == 3, fmt.Sprintf("%d of 3", n)
	})

	// A rogue: a plaintext server joining the gossip pool (it has the
	// gossip key, so gossip lets it in: gossip membership alone must not
	// make a voter), and a legitimate fourth server.
	pp := ports.Free(t, "127.0.0.1", 6)
	mk := func(name string, i int) Config {
		cfg := tc.cfgs[0]
		cfg.Name, cfg.DataDir = name, t.TempDir()
		cfg.APIPort, cfg.RaftPort, cfg.GossipPort = pp[3*i], pp[3*i+1], pp[3*i+2]
		cfg.BootstrapExpect = 0
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Error})
		return cfg
	}
	rogueCfg := mk("rogue", 0)
	rogueCfg.TLS, rogueCfg.InsecureNoTLS = tlsconf.Files{}, true
	fourthCfg := mk("s4", 1)
	fourthCfg.TLS = p.files("s4-server", tlsconf.RoleServer, false)
	for _, cfg := range []Config{rogueCfg, fourthCfg} {
		s, err := Start(ctx, cfg)
		if err != nil {
			t.Fatalf("start %s: %v", cfg.Name, err)
		}
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	voters := func() map[string]bool {
		out := map[string]bool{}
		fut := tc.srv[0].raft.GetConfiguration()
		if fut.Error() == nil {
			for _, sv := range fut.Configuration().Servers {
				out[string(sv.ID)] = sv.Suffrage == raft.Voter
			}
		}
		return out
	}
	wait.For(t, 60*time.Second, "s4 a voter and the rogue refused", func() (bool, string) {
		refused := false // by whichever server leads now
		for _, s := range tc.srv {
			s.refusedMu.Lock()
			_, r := s.refusedAt["rogue"]
			s.refusedMu.Unlock()
			refused = refused || r
		}
		v := voters()
		return v["s4"] && refused, fmt.Sprintf("voters %v, rogue refused %v", v, refused)
	})
	time.Sleep(5 * time.Second) // a few more peer loop passes
	if _, in := voters()["rogue"]; in {
		t.Fatalf("the rogue server is in the Raft configuration: %v", voters())
	}
}

// The caller's role reaches the handlers; a forwarded role is believed
// from a server only.
func TestTLSPeerRoleInContext(t *testing.T) {
	p := newTestPKI(t)
	srvM := p.material("ctx-server", tlsconf.RoleServer, false)
	s := &Server{tls: srvM}
	hs := httptest.NewUnstartedServer(s.withPeerRole(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role, _ := tlsconf.PeerRoleFrom(r.Context())
		fmt.Fprint(w, role)
	})))
	hs.TLS = srvM.ServerConfig(tlsconf.Roles...)
	hs.StartTLS()
	defer hs.Close()
	tests := []struct {
		role      tlsconf.Role
		forwarded string
		want      string
	}{
		{tlsconf.RoleCLI, "", "cli"},
		{tlsconf.RoleAgent, "", "agent"},
		{tlsconf.RoleServer, "", "server"},
		{tlsconf.RoleServer, "cli", "cli"},     // forwarded by a follower
		{tlsconf.RoleCLI, "server", "cli"},     // a CLI cannot claim more
		{tlsconf.RoleAgent, "server", "agent"}, // nor can an agent
		{tlsconf.RoleServer, "root", "server"}, // no such role
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s-as-%q", tt.role, tt.forwarded), func(t *testing.T) {
			m := p.material(fmt.Sprintf("ctx-%d", i), tt.role, false)
			tr := &http.Transport{TLSClientConfig: m.ClientConfig(tlsconf.RoleServer)}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodGet, hs.URL, nil)
			if tt.forwarded != "" {
				req.Header.Set(api.HeaderForwardedRole, tt.forwarded)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if got := string(body); got != tt.want {
				t.Fatalf("role in context %q, want %q", got, tt.want)
			}
		})
	}
}

// A non-dev server without TLS material refuses to start unless
// --insecure-no-tls; --dev needs nothing.
func TestServerRequiresTLSOutsideDev(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir, base.BootstrapExpect = "s1", t.TempDir(), 1
	base.GossipKey = testGossipKey
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no material", func(*Config) {}, "--tls-cert-file"},
		{"insecure", func(c *Config) { c.InsecureNoTLS = true }, ""},
		{"dev", func(c *Config) { c.Dev = true }, ""},
		{"material", func(c *Config) { c.TLS = tlsconf.Files{CAFile: "a", CertFile: "b", KeyFile: "c"} }, ""},
		{"half the material", func(c *Config) { c.TLS = tlsconf.Files{CAFile: "a", CertFile: "b"} }, "--tls-key-file"},
		{"no gossip key", func(c *Config) { c.InsecureNoTLS, c.GossipKey = true, "" }, "--gossip-key"},
		{"insecure no gossip key", func(c *Config) { c.InsecureNoTLS, c.GossipKey, c.InsecureNoGossipKey = true, "", true }, ""},
		{"insecure no gossip key and a key", func(c *Config) { c.InsecureNoTLS, c.InsecureNoGossipKey = true, true }, "--insecure-no-gossip-key"},
		{"bad gossip key", func(c *Config) { c.InsecureNoTLS, c.GossipKey = true, "AAAA" }, "--gossip-key"},
		{"dev no gossip key", func(c *Config) { c.Dev, c.GossipKey = true, "" }, ""},
		{"insecure and material", func(c *Config) {
			c.InsecureNoTLS = true
			c.TLS = tlsconf.Files{CAFile: "a", CertFile: "b", KeyFile: "c"}
		}, "--insecure-no-tls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.mod(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tt.wantErr)
			}
		})
	}
}

// The ping-back over TLS reaches an agent certificate only.
func TestTLSPingBack(t *testing.T) {
	p := newTestPKI(t)
	s := &Server{tls: p.material("pb-server", tlsconf.RoleServer, false)}
	pinger := s.pingClient()
	// The agent's answer names the node pinged (heartbeat.CheckAnswer).
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, api.PingResponse{NodeID: "n-pb", Name: "pb"})
	})
	listener := func(name string, role tlsconf.Role, foreign bool) *httptest.Server {
		hs := httptest.NewUnstartedServer(ok)
		hs.TLS = p.material(name, role, foreign).ServerConfig(tlsconf.RoleServer)
		hs.StartTLS()
		t.Cleanup(hs.Close)
		return hs
	}
	plain := httptest.NewServer(ok)
	defer plain.Close()
	tests := []struct {
		name string
		addr string
		ok   bool
	}{
		{"agent", listener("pb-agent", tlsconf.RoleAgent, false).Listener.Addr().String(), true},
		{"a server certificate", listener("pb-other-server", tlsconf.RoleServer, false).Listener.Addr().String(), false},
		{"an agent of another CA", listener("pb-foreign-agent", tlsconf.RoleAgent, true).Listener.Addr().String(), false},
		{"plaintext", plain.Listener.Addr().String(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := pinger.Ping(ctx, structs.Node{ID: "n-pb", Name: "pb", APIAddr: tt.addr})
			if tt.ok != (err == nil) {
				t.Fatalf("ping %s: %v, want ok=%v", tt.addr, err, tt.ok)
			}
		})
	}
}

// A non-dev server without TLS says so at start and every interval.
func TestInsecureWarning(t *testing.T) {
	old := insecureWarnEvery
	insecureWarnEvery = 20 * time.Millisecond
	defer func() { insecureWarnEvery = old }()
	var buf syncBuffer
	s := &Server{log: hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Warn})}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() { s.insecureLoop(done); close(finished) }()
	wait.For(t, 10*time.Second, "three warnings", func() (bool, string) {
		n := strings.Count(buf.String(), "running without TLS")
		return n >= 3, fmt.Sprint(n)
	})
	close(done)
	<-finished
}

// syncBuffer is a strings.Builder safe for a logger and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A newcomer claiming a member's Raft address is refused before any dial;
// without TLS the gate is open (gossip's key is the only one).
func TestMayAddVoterAddressTaken(t *testing.T) {
	p := newTestPKI(t)
	conf := raft.Configuration{Servers: []raft.Server{{ID: "s1", Address: "127.0.0.1:4651", Suffrage: raft.Voter}}}
	s := &Server{tls: p.material("may-server", tlsconf.RoleServer, false)}
	if err := s.mayAddVoter("127.0.0.1:4651", conf); err == nil || !strings.Contains(err.Error(), "already server s1's") {
		t.Fatalf("mayAddVoter of a member's address: %v", err)
	}
	if err := (&Server{}).mayAddVoter("127.0.0.1:4651", conf); err != nil {
		t.Fatalf("mayAddVoter without TLS: %v", err)
	}
}
