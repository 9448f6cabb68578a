package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a CA on disk with helpers to issue and load certificates.
type testCA struct {
	t      *testing.T
	dir    string
	caFile string
	ca     *CA
}

func newTestCA(t *testing.T, cluster string) *testCA {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM, err := CreateCA(CAOptions{Cluster: cluster})
	if err != nil {
		t.Fatalf("CreateCA: %v", err)
	}
	ca, err := LoadCA(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, dir: dir, caFile: caFile, ca: ca}
}

// trust adds other's certificate to this CA's file (a CA bundle).
func (c *testCA) trust(other *testCA) {
	c.t.Helper()
	mine, err1 := os.ReadFile(c.caFile)
	theirs, err2 := os.ReadFile(other.caFile)
	if err1 != nil || err2 != nil {
		c.t.Fatal(err1, err2)
	}
	if err := os.WriteFile(c.caFile, append(mine, theirs...), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// issue writes a certificate of o and returns its Files (with this CA).
func (c *testCA) issue(name string, o CertOptions) Files {
	c.t.Helper()
	certPEM, keyPEM, err := c.ca.Issue(o)
	if err != nil {
		c.t.Fatalf("Issue %s: %v", name, err)
	}
	f := Files{CAFile: c.caFile, CertFile: filepath.Join(c.dir, name+".pem"), KeyFile: filepath.Join(c.dir, name+"-key.pem")}
	if err := WritePair(f.CertFile, f.KeyFile, certPEM, keyPEM, true); err != nil {
		c.t.Fatal(err)
	}
	return f
}

// load issues and loads a certificate of role.
func (c *testCA) load(name string, role Role) *Material {
	c.t.Helper()
	m, err := Load(c.issue(name, CertOptions{Role: role}))
	if err != nil {
		c.t.Fatalf("Load %s: %v", name, err)
	}
	return m
}

// handshake runs one TLS handshake over loopback TCP and returns the
// server's and the client's error and the role the server saw.
func handshake(t *testing.T, srv, cli *tls.Config) (role Role, srvErr, cliErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		err  error
		role Role
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, srv)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		cs := tc.ConnectionState()
		// The server side reads one byte, so that a client whose
		// certificate is refused after its own handshake ends (TLS 1.3)
		// learns it from the alert.
		r, err := PeerRole(&cs, "global")
		if err == nil {
			_, _ = tc.Write([]byte{1})
		}
		done <- result{err: err, role: r}
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cli)
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		_, err = conn.Read(b[:])
		conn.Close()
	}
	res := <-done
	return res.role, res.err, err
}

func TestRoleVerification(t *testing.T) {
	ca := newTestCA(t, "")
	other := newTestCA(t, "")
	prod := newTestCA(t, "prod")
	// The foreign holders trust the cluster CA too (its certificate is no
	// secret), so that the cluster's side is the one that refuses them.
	other.trust(ca)
	prod.trust(ca)
	server := ca.load("server", RoleServer)
	agent := ca.load("agent", RoleAgent)
	cli := ca.load("cli", RoleCLI)
	foreign := other.load("foreign-server", RoleServer)
	otherCluster := prod.load("prod-server", RoleServer)
	_, err := Load(ca.issue("expired", CertOptions{Role: RoleServer, NotBefore: time.Now().Add(-48 * time.Hour), Validity: time.Hour}))
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Load of an expired certificate: err = %v, want one saying it expired", err)
	}
	// The expired certificate cannot be loaded through Load; present it raw.
	expiredFiles := ca.issue("expired2", CertOptions{Role: RoleServer, NotBefore: time.Now().Add(-48 * time.Hour), Validity: time.Hour})
	expiredPair, err := tls.LoadX509KeyPair(expiredFiles.CertFile, expiredFiles.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	withCert := func(pair tls.Certificate, peer Role) *tls.Config {
		c := server.ClientConfig(peer)
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		return c
	}
	noCert := server.ClientConfig(RoleServer)
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }

	tests := []struct {
		name     string
		srv      *tls.Config
		cli      *tls.Config
		wantRole Role   // "" = refused
		wantErr  string // in the server's or the client's error
	}{
		{"server to server", server.ServerConfig(RoleServer), server.ClientConfig(RoleServer), RoleServer, ""},
		{"agent to an agent listener", agent.ServerConfig(RoleServer, RoleAgent), agent.ClientConfig(RoleAgent), RoleAgent, ""},
		{"cli to a server", server.ServerConfig(RoleServer, RoleAgent, RoleCLI), cli.ClientConfig(RoleServer), RoleCLI, ""},
		{"wrong role calling", server.ServerConfig(RoleServer), agent.ClientConfig(RoleServer), "", "may not call"},
		{"cli calling an agent-only listener", agent.ServerConfig(RoleAgent), cli.ClientConfig(RoleAgent), "", "may not call"},
		{"wrong role answering", agent.ServerConfig(RoleServer), server.ClientConfig(RoleServer), "", "server.global.chime"},
		{"other CA calling", server.ServerConfig(RoleServer), foreign.ClientConfig(RoleServer), "", "unknown authority"},
		{"other CA answering", foreign.ServerConfig(RoleServer), server.ClientConfig(RoleServer), "", "certificate"},
		{"other cluster calling", server.ServerConfig(RoleServer), otherCluster.ClientConfig(RoleServer), "", "unknown authority"},
		{"expired calling", server.ServerConfig(RoleServer), withCert(expiredPair, RoleServer), "", "expired"},
		{"no client certificate", server.ServerConfig(RoleServer, RoleAgent, RoleCLI), noCert, "", "certificate"},
		{"plaintext-trusting client, i.e. no CA", server.ServerConfig(RoleServer), &tls.Config{ServerName: "server.global.chime"}, "", "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role, srvErr, cliErr := handshake(t, tt.srv, tt.cli)
			if tt.wantRole != "" {
				if srvErr != nil || cliErr != nil {
					t.Fatalf("handshake refused: server %v, client %v", srvErr, cliErr)
				}
				if role != tt.wantRole {
					t.Fatalf("peer role = %q, want %q", role, tt.wantRole)
				}
				return
			}
			if srvErr == nil && cliErr == nil {
				t.Fatalf("handshake accepted (server saw role %q), want refused", role)
			}
			both := ""
			if srvErr != nil {
				both += srvErr.Error()
			}
			if cliErr != nil {
				both += " | " + cliErr.Error()
			}
			t.Logf("refused: %s", both)
			if !strings.Contains(both, tt.wantErr) {
				t.Fatalf("errors %q do not mention %q", both, tt.wantErr)
			}
		})
	}
}

func TestCertificateContents(t *testing.T) {
	ca := newTestCA(t, "prod")
	tests := []struct {
		role    Role
		wantEKU []x509.ExtKeyUsage
		wantDNS []string
	}{
		{RoleServer, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, []string{"server.prod.chime", "localhost", "s1.example"}},
		{RoleAgent, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, []string{"agent.prod.chime", "localhost", "s1.example"}},
		{RoleCLI, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, []string{"cli.prod.chime", "s1.example"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.role), func(t *testing.T) {
			certPEM, _, err := ca.ca.Issue(CertOptions{Role: tt.role, Cluster: "prod", DNSNames: []string{"s1.example"},
				IPs: []net.IP{net.ParseIP("10.0.0.1")}, Validity: 24 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := pem.Decode(certPEM)
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(c.DNSNames, ",") != strings.Join(tt.wantDNS, ",") {
				t.Errorf("DNS names %v, want %v", c.DNSNames, tt.wantDNS)
			}
			if len(c.ExtKeyUsage) != len(tt.wantEKU) {
				t.Errorf("extended key usages %v, want %v", c.ExtKeyUsage, tt.wantEKU)
			}
			if !c.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) {
				t.Errorf("IP addresses %v, want 10.0.0.1 first", c.IPAddresses)
			}
			if d := c.NotAfter.Sub(c.NotBefore); d != 24*time.Hour {
				t.Errorf("validity %s, want 24h", d)
			}
			r, cl, err := CertRole(c)
			if err != nil || r != tt.role || cl != "prod" {
				t.Errorf("CertRole = %s, %s, %v; want %s, prod", r, cl, err, tt.role)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	ca := newTestCA(t, "")
	other := newTestCA(t, "")
	good := ca.issue("good", CertOptions{Role: RoleAgent})
	_, otherKey, _ := CreateCA(CAOptions{})
	caPEM, _ := os.ReadFile(ca.caFile)
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"unknown role", func() error { _, _, err := ca.ca.Issue(CertOptions{Role: "admin"}); return err }, "role"},
		{"bad cluster", func() error { _, _, err := ca.ca.Issue(CertOptions{Role: RoleCLI, Cluster: "Prod.1"}); return err }, "--cluster"},
		{"negative validity", func() error { _, _, err := ca.ca.Issue(CertOptions{Role: RoleCLI, Validity: -time.Hour}); return err }, "--days"},
		{"role name as extra DNS name", func() error {
			_, _, err := ca.ca.Issue(CertOptions{Role: RoleAgent, DNSNames: []string{"server.global.chime"}})
			return err
		}, "--additional-dnsname"},
		{"CA key of another CA", func() error { _, err := LoadCA(caPEM, otherKey); return err }, "--ca-key-file"},
		{"missing key file flag", func() error { _, err := Load(Files{CAFile: good.CAFile, CertFile: good.CertFile}); return err }, "--tls-key-file"},
		{"missing CA file flag", func() error { _, err := Load(Files{CertFile: good.CertFile, KeyFile: good.KeyFile}); return err }, "--tls-ca-file"},
		{"certificate of another CA", func() error {
			f := good
			f.CAFile = other.caFile
			_, err := Load(f)
			return err
		}, "not valid under --tls-ca-file"},
		{"key of another certificate", func() error {
			f := good
			f.KeyFile = ca.issue("second", CertOptions{Role: RoleAgent}).KeyFile
			_, err := Load(f)
			return err
		}, "--tls-key-file"},
		{"a certificate as CA", func() error {
			f := good
			f.CAFile = good.CertFile
			_, err := Load(f)
			return err
		}, "not a CA certificate"},
		{"refuse to overwrite", func() error {
			return WritePair(good.CertFile, good.KeyFile, []byte("x"), []byte("y"), false)
		}, "--force"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	m, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Expect(RoleServer); err == nil || !strings.Contains(err.Error(), "--server") {
		t.Fatalf("Expect(server) of an agent certificate: %v", err)
	}
	if fi, err := os.Stat(good.KeyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}

// A renewed certificate written over the files is picked up without a
// restart; a pair of another role is not.
func TestReload(t *testing.T) {
	ca := newTestCA(t, "")
	f := ca.issue("node", CertOptions{Role: RoleAgent, DNSNames: []string{"first.example"}})
	m, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	rewrite := func(o CertOptions) {
		certPEM, keyPEM, err := ca.ca.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := WritePair(f.CertFile, f.KeyFile, certPEM, keyPEM, true); err != nil {
			t.Fatal(err)
		}
		later := time.Now().Add(time.Minute)
		_ = os.Chtimes(f.CertFile, later, later)
		_ = os.Chtimes(f.KeyFile, later, later)
		m.mu.Lock()
		m.checked = time.Time{} // as if reloadEvery had passed
		m.mu.Unlock()
	}
	var reloads []error
	m.OnReload(func(_ string, err error) { reloads = append(reloads, err) })
	names := func() string { return strings.Join(m.current().Leaf.DNSNames, ",") }
	rewrite(CertOptions{Role: RoleAgent, DNSNames: []string{"second.example"}})
	if got := names(); !strings.Contains(got, "second.example") {
		t.Fatalf("after renewal the certificate names %s, want second.example", got)
	}
	rewrite(CertOptions{Role: RoleServer})
	if got := names(); !strings.Contains(got, "second.example") {
		t.Fatalf("a certificate of another role replaced the agent's: %s", got)
	}
	if len(reloads) != 2 || reloads[0] != nil || reloads[1] == nil || !strings.Contains(reloads[1].Error(), "server.global.chime") {
		t.Fatalf("reload reports %v, want nil then an error naming server.global.chime", reloads)
	}
}

func TestPeerRoleContext(t *testing.T) {
	ctx := context.Background()
	if _, ok := PeerRoleFrom(ctx); ok {
		t.Fatal("empty context has a role")
	}
	if r, ok := PeerRoleFrom(WithPeerRole(ctx, RoleAgent)); !ok || r != RoleAgent {
		t.Fatalf("PeerRoleFrom = %q, %v", r, ok)
	}
	if _, err := PeerRole(&tls.ConnectionState{}, "global"); err == nil {
		t.Fatal("PeerRole of a connection without certificates succeeded")
	}
}

// TestCertNames: a certificate's holder identity is its common name (when
// not the role name) and its own DNS names and addresses; a certificate
// made for a role only names nobody.
func TestCertNames(t *testing.T) {
	ca := newTestCA(t, "prod")
	for _, tt := range []struct {
		name string
		o    CertOptions
		want string
	}{
		{"role only", CertOptions{Role: RoleAgent, Cluster: "prod"}, ""},
		{"common name", CertOptions{Role: RoleAgent, Cluster: "prod", CommonName: "hv1"}, "cn:hv1"},
		{"names and addresses, sorted", CertOptions{Role: RoleAgent, Cluster: "prod", CommonName: "hv1",
			DNSNames: []string{"hv1.example", "a.example"}, IPs: []net.IP{net.ParseIP("10.0.0.11")}},
			"cn:hv1,dns:a.example,dns:hv1.example,ip:10.0.0.11"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, _, err := ca.ca.Issue(tt.o)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := pem.Decode(certPEM)
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if got := CertNames(c); got != tt.want {
				t.Errorf("CertNames = %q, want %q", got, tt.want)
			}
			if r, _, err := CertRole(c); err != nil || r != RoleAgent {
				t.Errorf("CertRole = %s, %v: a common name must not change the role", r, err)
			}
		})
	}
	if _, _, err := ca.ca.Issue(CertOptions{Role: RoleAgent, CommonName: "a b"}); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("common name with a space: %v, want refused naming --name", err)
	}
}
