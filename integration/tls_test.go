package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// tlsDir is a CA and certificates made with the binary's own `chime tls`.
type tlsDir struct {
	dir string
}

func (d tlsDir) path(name string) string { return filepath.Join(d.dir, name) }

// flags are the --tls-* flags of the certificate NAME.pem.
func (d tlsDir) flags(name string) []string {
	return []string{"--tls-ca-file", d.path("chime-ca.pem"), "--tls-cert-file", d.path(name + ".pem"), "--tls-key-file", d.path(name + "-key.pem")}
}

func makeTLSDir(t *testing.T, ctx context.Context, certs map[string]string) tlsDir {
	t.Helper()
	d := tlsDir{dir: t.TempDir()}
	if _, err := cli(ctx, "tls", "ca", "create", "--out", d.dir); err != nil {
		t.Fatal(err)
	}
	for name, role := range certs {
		if _, err := cli(ctx, "tls", "cert", "create", "--"+role, "--name", name, "--out", d.dir,
			"--ca-file", d.path("chime-ca.pem"), "--ca-key-file", d.path("chime-ca-key.pem")); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// TestTLSServers is issue 12's transport check with the built binary:
// three servers on mutual TLS form a cluster; the CLI with a cli
// certificate works through every server; a plaintext CLI, one with
// another CA's certificate, and raw Raft RPCs without a server certificate
// are refused and change nothing; a server with an agent certificate
// refuses to start; a rogue `chime server --join` without a server
// certificate never becomes a voter.
func TestTLSServers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pki := makeTLSDir(t, ctx, map[string]string{"server": "server", "cli": "cli", "agent": "agent"})
	foreign := makeTLSDir(t, ctx, map[string]string{"cli": "cli", "server": "server"})
	// The foreign holder trusts the cluster's CA too (no secret), so that
	// it is the servers that must refuse it.
	bundle := foreign.path("bundle.pem")
	a, _ := os.ReadFile(foreign.path("chime-ca.pem"))
	b, _ := os.ReadFile(pki.path("chime-ca.pem"))
	if err := os.WriteFile(bundle, append(a, b...), 0o644); err != nil {
		t.Fatal(err)
	}

	files := func(d tlsDir, name string) tlsconf.Files {
		return tlsconf.Files{CAFile: d.path("chime-ca.pem"), CertFile: d.path(name + ".pem"), KeyFile: d.path(name + "-key.pem")}
	}
	ss := newServerSetTLS(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}, t.TempDir(), t.TempDir(),
		loadClusterTLS(t, files(pki, "server"), files(pki, "agent"), files(pki, "cli")))
	https := func(i int) string { return fmt.Sprintf("https://%s:%d", ss.ips[i], ss.ports[i][0]) }
	cliM, err := tlsconf.Load(tlsconf.Files{CAFile: pki.path("chime-ca.pem"), CertFile: pki.path("cli.pem"), KeyFile: pki.path("cli-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	client := func(i int) *api.Client {
		c := api.NewClient(https(i))
		c.Retries = 0
		c.Token = ss.token
		c.UseTLS(cliM.ClientConfig(tlsconf.RoleServer))
		return c
	}
	leader := func() int {
		idx := -1
		wait.For(t, 60*time.Second, "a leader over TLS", func() (bool, string) {
			for i := range ss.names {
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
				st, err := client(i).Status(cctx)
				ccancel()
				if err == nil && st.IsLeader {
					idx = i
					return true, ""
				}
			}
			return false, "no server reports itself leader"
		})
		return idx
	}
	l := leader()
	t.Logf("leader %s", ss.names[l])
	ss.bootstrapACL()

	// The CLI with a cli certificate, through every server.
	good := pki.flags("cli")
	for i := range ss.names {
		args := append([]string{"vm", "create", fmt.Sprintf("web-%d", i), "--vcpus", "1", "--memory", "64", "--address", https(i)}, good...)
		if _, err := cli(ctx, args...); err != nil {
			t.Fatalf("CLI with a cli certificate through %s: %v", ss.names[i], err)
		}
	}
	// The address may be written without a scheme or with http://: TLS
	// material makes it https.
	if _, err := cli(ctx, append([]string{"vm", "show", "web-0", "--address", fmt.Sprintf("http://127.0.0.1:%d", ss.ports[0][0])}, good...)...); err != nil {
		t.Fatalf("CLI with TLS files and an http:// address: %v", err)
	}

	// Refused: plaintext, another CA's certificates, no key.
	refused := []struct {
		name string
		args []string
		want string
	}{
		{"plaintext", []string{"--address", fmt.Sprintf("http://127.0.0.1:%d", ss.ports[l][0])}, "HTTPS"},
		{"cli certificate of another CA", []string{"--address", https(l), "--tls-ca-file", bundle,
			"--tls-cert-file", foreign.path("cli.pem"), "--tls-key-file", foreign.path("cli-key.pem")}, "certificate"},
		{"server certificate of another CA", []string{"--address", https(l), "--tls-ca-file", bundle,
			"--tls-cert-file", foreign.path("server.pem"), "--tls-key-file", foreign.path("server-key.pem")}, "certificate"},
		{"cluster CA but no certificate given", []string{"--address", https(l), "--tls-ca-file", pki.path("chime-ca.pem")}, "--tls-cert-file"},
	}
	for i, r := range refused {
		name := fmt.Sprintf("refused-%d", i)
		_, err := cli(ctx, append([]string{"vm", "create", name, "--vcpus", "1", "--memory", "64"}, r.args...)...)
		if err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: %v, want refused mentioning %q", r.name, err, r.want)
		}
		t.Logf("%s refused: %v", r.name, err)
	}
	vms, _, err := client(l).ListVMs(ctx, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 3 {
		t.Fatalf("%d VMs after 3 accepted and %d refused creates, want 3: %v", len(vms), len(refused), vms)
	}

	// Raw Raft RPCs at the leader's Raft port: plain TCP, and TLS with an
	// agent certificate of the cluster. A vote request with a huge term,
	// accepted, would depose the leader.
	raftAddr := raft.ServerAddress(fmt.Sprintf("%s:%d", ss.ips[l], ss.ports[l][1]))
	plain, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, 3*time.Second, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	agentM, err := tlsconf.Load(tlsconf.Files{CAFile: pki.path("chime-ca.pem"), CertFile: pki.path("agent.pem"), KeyFile: pki.path("agent-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	agentTrans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &dialOnlyStream{cfg: agentM.ClientConfig(tlsconf.RoleServer), ln: mustListen(t)}, MaxPool: 1, Timeout: 3 * time.Second,
		Logger: hclog.NewNullLogger()})
	defer agentTrans.Close()
	for _, tr := range []struct {
		name  string
		trans *raft.NetworkTransport
	}{{"plain TCP", plain}, {"TLS with an agent certificate", agentTrans}} {
		req := &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte(tr.trans.LocalAddr())},
			Term: 1 << 30, LastLogIndex: 1 << 40, LastLogTerm: 1 << 30}
		var resp raft.RequestVoteResponse
		if err := tr.trans.RequestVote("rogue", raftAddr, req, &resp); err == nil {
			t.Errorf("raw Raft RPC over %s answered (granted %v, term %d), want refused", tr.name, resp.Granted, resp.Term)
		} else {
			t.Logf("raw Raft RPC over %s refused: %v", tr.name, err)
		}
	}
	time.Sleep(2 * time.Second) // a deposed leader would have stepped down by now
	if st, err := client(l).Status(ctx); err != nil || !st.IsLeader {
		t.Fatalf("after the raw Raft RPCs %s is no longer the leader: %+v, %v", ss.names[l], st, err)
	}

	// A server given an agent certificate refuses to start.
	rp := ports.Free(t, "127.0.0.1", 6)
	badArgs := append([]string{"server", "--name", "wrong-cert", "--data-dir", filepath.Join(t.TempDir(), "w"), "--bind", "127.0.0.1",
		"--api-port", strconv.Itoa(rp[3]), "--raft-port", strconv.Itoa(rp[4]), "--gossip-port", strconv.Itoa(rp[5]),
		"--join", fmt.Sprintf("127.0.0.1:%d", ss.ports[l][2])}, append(pki.flags("agent"), ss.tls.gossipArgs()...)...)
	if _, err := cli(ctx, badArgs...); err == nil || !strings.Contains(err.Error(), "--tls-cert-file") {
		t.Errorf("server with an agent certificate: %v, want a refusal naming --tls-cert-file", err)
	}

	// A rogue server without a server certificate joins the gossip pool
	// (it holds the gossip key: gossip membership alone must not make a
	// voter).
	rogue := startProc(t, fmt.Sprintf("rogue-%d", time.Now().UnixNano()), ss.logs, nil, "--log-level", "debug", "server",
		"--name", "rogue", "--data-dir", filepath.Join(t.TempDir(), "rogue"), "--bind", "127.0.0.1",
		"--api-port", strconv.Itoa(rp[0]), "--raft-port", strconv.Itoa(rp[1]), "--gossip-port", strconv.Itoa(rp[2]),
		"--gossip-profile", "local", "--insecure-no-tls", "--gossip-key", ss.tls.gossipKey,
		"--join", fmt.Sprintf("127.0.0.1:%d", ss.ports[0][2]), "--join", fmt.Sprintf("127.0.0.1:%d", ss.ports[1][2]))
	wait.For(t, 60*time.Second, "the rogue in the servers' gossip pool and refused as a voter", func() (bool, string) {
		ms, err := client(l).Members(ctx)
		if err != nil {
			return false, err.Error()
		}
		inPool := false
		for _, m := range ms {
			inPool = inPool || m.Name == "rogue"
		}
		refusedLog := false
		for _, p := range ss.procs {
			data, _ := os.ReadFile(p.log)
			refusedLog = refusedLog || strings.Contains(string(data), "refusing to add a server gossip announced as a Raft voter: server=rogue")
		}
		return inPool && refusedLog, fmt.Sprintf("in pool %v, refusal logged %v", inPool, refusedLog)
	})
	time.Sleep(6 * time.Second) // three more passes of the leader's peer loop
	peers, err := client(l).Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 3 {
		t.Fatalf("Raft peers %+v, want exactly the three servers", peers)
	}
	for _, p := range peers {
		if p.ID == "rogue" {
			t.Fatalf("the rogue server is a Raft peer: %+v", peers)
		}
	}
	if !rogue.running() {
		t.Log("the rogue server exited on its own")
	}
	data, _ := os.ReadFile(rogue.log)
	if !strings.Contains(string(data), "running without TLS") {
		t.Error("the rogue's --insecure-no-tls did not log the warning")
	}
}

// dialOnlyStream is a raft.StreamLayer that dials over TLS with cfg (a
// test's stand-in for a peer holding a certificate of its choosing).
type dialOnlyStream struct {
	cfg *tls.Config
	ln  net.Listener
}

func (s *dialOnlyStream) Accept() (net.Conn, error) { return s.ln.Accept() }
func (s *dialOnlyStream) Close() error              { return s.ln.Close() }
func (s *dialOnlyStream) Addr() net.Addr            { return s.ln.Addr() }
func (s *dialOnlyStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), s.cfg)
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}
