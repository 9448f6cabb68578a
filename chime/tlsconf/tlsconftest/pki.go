// Package tlsconftest is the test fixture of TLS material: a cluster CA and
// a foreign CA in a temporary directory, and certificates of any role from
// either, as files and as loaded tlsconf.Material.
package tlsconftest

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/chime-ha/chime/chime/tlsconf"
)

// PKI is a cluster CA and a foreign one, on disk.
type PKI struct {
	Dir    string      // where every file is written
	CAFile string      // the cluster CA's certificate
	CA     *tlsconf.CA // the cluster CA
	// ForeignCAFile is the CA file of the foreign certificates: the foreign
	// CA's certificate followed by the cluster CA's (which is no secret),
	// so that a foreign holder trusts the cluster and it is the cluster's
	// side that must refuse it.
	ForeignCAFile string
	Foreign       *tlsconf.CA

	mu    sync.Mutex
	names map[string]bool
}

// New makes both CAs (cluster name tlsconf.DefaultCluster) in a temporary
// directory of t.
func New(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{Dir: t.TempDir(), names: map[string]bool{}}
	mk := func(name string) (*tlsconf.CA, string, []byte) {
		certPEM, keyPEM, err := tlsconf.CreateCA(tlsconf.CAOptions{})
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(p.Dir, name+".pem")
		if err := tlsconf.WritePair(file, filepath.Join(p.Dir, name+"-key.pem"), certPEM, keyPEM, false); err != nil {
			t.Fatal(err)
		}
		ca, err := tlsconf.LoadCA(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return ca, file, certPEM
	}
	var clusterPEM, foreignPEM []byte
	p.CA, p.CAFile, clusterPEM = mk("ca")
	p.Foreign, _, foreignPEM = mk("foreign-ca")
	p.ForeignCAFile = filepath.Join(p.Dir, "foreign-bundle.pem")
	if err := os.WriteFile(p.ForeignCAFile, append(foreignPEM, clusterPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Files issues a certificate of role named name (unique per PKI) from the
// cluster CA, or the foreign one, and returns the files naming it.
func (p *PKI) Files(t testing.TB, name string, role tlsconf.Role, foreign bool) tlsconf.Files {
	t.Helper()
	return p.FilesWith(t, name, tlsconf.CertOptions{Role: role}, foreign)
}

// FilesWith is Files for a certificate of options o (a common name, more
// names).
func (p *PKI) FilesWith(t testing.TB, name string, o tlsconf.CertOptions, foreign bool) tlsconf.Files {
	t.Helper()
	p.mu.Lock()
	if p.names[name] {
		p.mu.Unlock()
		t.Fatalf("tlsconftest: certificate name %q used twice", name)
	}
	p.names[name] = true
	p.mu.Unlock()
	ca, caFile := p.CA, p.CAFile
	if foreign {
		ca, caFile = p.Foreign, p.ForeignCAFile
	}
	f := tlsconf.Files{CAFile: caFile, CertFile: filepath.Join(p.Dir, name+".pem"), KeyFile: filepath.Join(p.Dir, name+"-key.pem")}
	if err := ca.IssueFiles(o, f.CertFile, f.KeyFile, false); err != nil {
		t.Fatal(err)
	}
	return f
}

// Material issues a certificate as Files does and loads it.
func (p *PKI) Material(t testing.TB, name string, role tlsconf.Role, foreign bool) *tlsconf.Material {
	t.Helper()
	m, err := tlsconf.Load(p.Files(t, name, role, foreign))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
