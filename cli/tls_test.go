package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/tlsconf"
)

// run runs the chime command line with args and returns its error.
func run(t *testing.T, args ...string) error {
	t.Helper()
	var out bytes.Buffer
	old := stdout
	stdout = &out
	defer func() { stdout = old }()
	return App().RunContext(context.Background(), append([]string{"chime"}, args...))
}

func TestTLSCommands(t *testing.T) {
	dir := t.TempDir()
	ca := []string{"--ca-file", filepath.Join(dir, "chime-ca.pem"), "--ca-key-file", filepath.Join(dir, "chime-ca-key.pem")}
	steps := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"CA", []string{"tls", "ca", "create", "--out", dir}, ""},
		{"CA again", []string{"tls", "ca", "create", "--out", dir}, "--force"},
		{"CA forced", []string{"tls", "ca", "create", "--out", dir, "--force", "--days", "30"}, ""},
		{"server", append([]string{"tls", "cert", "create", "--server", "--out", dir, "--name", "s1", "--additional-ipaddress", "10.0.0.1"}, ca...), ""},
		{"agent", append([]string{"tls", "cert", "create", "--agent", "--out", dir, "--cluster", "prod"}, ca...), ""},
		{"cli", append([]string{"tls", "cert", "create", "--cli", "--out", dir}, ca...), ""},
		{"cli again", append([]string{"tls", "cert", "create", "--cli", "--out", dir}, ca...), "--force"},
		{"no role", append([]string{"tls", "cert", "create", "--out", dir}, ca...), "exactly one"},
		{"two roles", append([]string{"tls", "cert", "create", "--server", "--cli", "--out", dir}, ca...), "exactly one"},
		{"bad ip", append([]string{"tls", "cert", "create", "--cli", "--name", "x", "--out", dir, "--additional-ipaddress", "ten"}, ca...), "--additional-ipaddress"},
		{"bad cluster", append([]string{"tls", "cert", "create", "--cli", "--name", "x", "--out", dir, "--cluster", "Prod"}, ca...), "--cluster"},
		{"bad days", append([]string{"tls", "cert", "create", "--cli", "--name", "x", "--out", dir, "--days", "0"}, ca...), "--days"},
		{"missing CA", []string{"tls", "cert", "create", "--cli", "--name", "x", "--out", dir, "--ca-file", filepath.Join(dir, "none.pem")}, "--ca-file"},
		{"name with a directory", append([]string{"tls", "cert", "create", "--cli", "--name", "../x", "--out", dir}, ca...), "--name"},
	}
	for _, s := range steps {
		err := run(t, s.args...)
		if s.wantErr == "" && err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)) {
			t.Fatalf("%s: err = %v, want one naming %s", s.name, err, s.wantErr)
		}
	}
	for _, c := range []struct {
		file    string
		role    tlsconf.Role
		cluster string
	}{{"s1", tlsconf.RoleServer, "global"}, {"prod-agent", tlsconf.RoleAgent, "prod"}, {"global-cli", tlsconf.RoleCLI, "global"}} {
		m, err := tlsconf.Load(tlsconf.Files{CAFile: filepath.Join(dir, "chime-ca.pem"),
			CertFile: filepath.Join(dir, c.file+".pem"), KeyFile: filepath.Join(dir, c.file+"-key.pem")})
		if err != nil {
			t.Fatalf("load %s: %v", c.file, err)
		}
		if m.Role() != c.role || m.Cluster() != c.cluster {
			t.Errorf("%s carries %s in %s, want %s in %s", c.file, m.Role(), m.Cluster(), c.role, c.cluster)
		}
		fi, err := os.Stat(filepath.Join(dir, c.file+"-key.pem"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s key mode %v, %v; want 0600", c.file, fi.Mode().Perm(), err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.pem")); err == nil {
		t.Error("a refused cert create wrote x.pem")
	}
}

// Bad client TLS flags fail the command with the flag named, before any
// request leaves.
func TestClientTLSFlags(t *testing.T) {
	err := run(t, "node", "list", "--address", "127.0.0.1:1", "--tls-ca-file", "ca.pem", "--tls-cert-file", "c.pem")
	if err == nil || !strings.Contains(err.Error(), "--tls-key-file") {
		t.Fatalf("err = %v, want one naming --tls-key-file", err)
	}
	err = run(t, "server", "--dev", "--tls-ca-file", "nope.pem", "--tls-cert-file", "c.pem", "--tls-key-file", "k.pem")
	if err == nil || !strings.Contains(err.Error(), "--tls-ca-file") {
		t.Fatalf("server with a missing CA file: %v, want one naming --tls-ca-file", err)
	}
}
