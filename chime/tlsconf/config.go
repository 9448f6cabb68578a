package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// Files name a process's TLS material: the cluster CA, its own certificate
// and its key. All three or none (plaintext).
type Files struct {
	CAFile   string // --tls-ca-file: the CA certificate(s), PEM (several during a CA rotation)
	CertFile string // --tls-cert-file: this process's certificate, PEM
	KeyFile  string // --tls-key-file: its private key, PEM
}

// Enabled reports whether any file is set (Validate then wants all three).
func (f Files) Enabled() bool { return f.CAFile != "" || f.CertFile != "" || f.KeyFile != "" }

// Validate checks that the files are given together; the error names the
// missing flag.
func (f Files) Validate() error {
	if !f.Enabled() {
		return nil
	}
	for _, m := range []struct{ flag, v string }{{"--tls-ca-file", f.CAFile}, {"--tls-cert-file", f.CertFile}, {"--tls-key-file", f.KeyFile}} {
		if m.v == "" {
			return fmt.Errorf("%s: required with the other --tls-* files (TLS needs the CA, a certificate and its key)", m.flag)
		}
	}
	return nil
}

// reloadEvery bounds how often the certificate files are checked for a
// change (rotation without a restart).
const reloadEvery = 5 * time.Second

// Material is a loaded CA pool and this process's own certificate, with the
// role and cluster the certificate carries. The certificate and key are
// read again when their files change, so a renewed certificate is used by
// new connections without a restart; the CA file is read once.
type Material struct {
	files   Files
	pool    *x509.CertPool
	role    Role
	cluster string

	mu       sync.Mutex
	onReload func(certFile string, err error) // see OnReload
	cert     *tls.Certificate
	certMod  time.Time // modification times of the files cert was read from
	keyMod   time.Time
	checked  time.Time // last look at the files
}

// Load reads the CA, the certificate and the key. The certificate must be
// signed by the CA, valid now, and carry exactly one role name.
func Load(f Files) (*Material, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, errors.New("--tls-ca-file, --tls-cert-file, --tls-key-file: not set")
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca-file: %w", err)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca-file %s: %w", f.CAFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("--tls-ca-file %s: %q is not a CA certificate", f.CAFile, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	m := &Material{files: f, pool: pool}
	cert, certMod, keyMod, err := m.readCert()
	if err != nil {
		return nil, err
	}
	if m.role, m.cluster, err = CertRole(cert.Leaf); err != nil {
		return nil, fmt.Errorf("--tls-cert-file %s: %w", f.CertFile, err)
	}
	m.cert, m.certMod, m.keyMod, m.checked = cert, certMod, keyMod, time.Now()
	return m, nil
}

// readCert reads the key pair and checks it against the CA.
func (m *Material) readCert() (*tls.Certificate, time.Time, time.Time, error) {
	var zero time.Time
	ci, err := os.Stat(m.files.CertFile)
	if err != nil {
		return nil, zero, zero, fmt.Errorf("--tls-cert-file: %w", err)
	}
	ki, err := os.Stat(m.files.KeyFile)
	if err != nil {
		return nil, zero, zero, fmt.Errorf("--tls-key-file: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(m.files.CertFile, m.files.KeyFile)
	if err != nil {
		return nil, zero, zero, fmt.Errorf("--tls-cert-file %s, --tls-key-file %s: %w", m.files.CertFile, m.files.KeyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, zero, zero, fmt.Errorf("--tls-cert-file: %w", err)
		}
		pair.Leaf = leaf
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, zero, zero, fmt.Errorf("--tls-cert-file %s: not valid under --tls-ca-file %s: %w", m.files.CertFile, m.files.CAFile, err)
	}
	return &pair, ci.ModTime(), ki.ModTime(), nil
}

// OnReload sets fn to be told of every reload of the certificate files
// after a change: err nil when the new pair is in use, else why it was
// ignored (the old pair stays in use). The server and the agent log it.
// fn runs during a handshake, with the material locked: it must not call m.
func (m *Material) OnReload(fn func(certFile string, err error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onReload = fn
}

// current returns the certificate, reading the files again when they
// changed. A changed pair that does not load (half written, wrong CA,
// another role) is ignored, and reported to OnReload's function: the old
// pair stays in use until a good pair is in place.
func (m *Material) current() *tls.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.checked) < reloadEvery {
		return m.cert
	}
	m.checked = time.Now()
	ci, err1 := os.Stat(m.files.CertFile)
	ki, err2 := os.Stat(m.files.KeyFile)
	if err1 != nil || err2 != nil || (ci.ModTime().Equal(m.certMod) && ki.ModTime().Equal(m.keyMod)) {
		return m.cert
	}
	cert, certMod, keyMod, err := m.readCert()
	if err == nil {
		var r Role
		var c string
		if r, c, err = CertRole(cert.Leaf); err == nil && (r != m.role || c != m.cluster) {
			err = fmt.Errorf("--tls-cert-file %s: the new certificate is %s, this process runs as %s", m.files.CertFile, RoleName(r, c), RoleName(m.role, m.cluster))
		}
	}
	if m.onReload != nil {
		m.onReload(m.files.CertFile, err)
	}
	if err != nil {
		return m.cert
	}
	m.cert, m.certMod, m.keyMod = cert, certMod, keyMod
	return m.cert
}

// Role is the role this process's certificate carries.
func (m *Material) Role() Role { return m.role }

// Cluster is the cluster name this process's certificate carries.
func (m *Material) Cluster() string { return m.cluster }

// Expect checks that this process's certificate carries role; the error
// names the flag and how to make the right certificate.
func (m *Material) Expect(role Role) error {
	if m.role != role {
		return fmt.Errorf("--tls-cert-file %s: the certificate carries role %s (%s); this needs a %s certificate ('chime tls cert create --%s')",
			m.files.CertFile, m.role, RoleName(m.role, m.cluster), role, role)
	}
	return nil
}

// ServerConfig is the listener side: this process's certificate, and a
// client certificate from the CA required of every caller (verify_incoming)
// whose role must be one of allow. A caller with no certificate, one from
// another CA, an expired one, or another role fails the handshake.
func (m *Material) ServerConfig(allow ...Role) *tls.Config {
	allow = slices.Clone(allow)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  m.pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.current(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			role, err := PeerRole(&cs, m.cluster)
			if err != nil {
				return err
			}
			if !slices.Contains(allow, role) {
				return fmt.Errorf("tls: a %s certificate may not call this listener (allowed: %v)", role, allow)
			}
			return nil
		},
	}
}

// ClientConfig is the dialer side: this process's certificate as the client
// certificate, and the peer's certificate verified against the CA
// (verify_outgoing) and required to carry peer's role name in this cluster
// (verify_server_hostname): a dialer meaning to reach a server refuses an
// agent's certificate even when the CA signed it.
func (m *Material) ClientConfig(peer Role) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    m.pool,
		ServerName: RoleName(peer, m.cluster),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.current(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			role, err := PeerRole(&cs, m.cluster)
			if err != nil {
				return err
			}
			if role != peer {
				return fmt.Errorf("tls: peer presented a %s certificate, want %s", role, peer)
			}
			return nil
		},
	}
}

// PeerRole returns the role of the peer of a connection whose certificate
// chain was verified, in cluster. An unverified connection, a certificate
// with no or several role names, or a role name of another cluster is an
// error.
func PeerRole(cs *tls.ConnectionState, cluster string) (Role, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return "", errors.New("tls: the peer presented no certificate")
	}
	if len(cs.VerifiedChains) == 0 {
		return "", errors.New("tls: the peer's certificate was not verified against the CA")
	}
	role, c, err := CertRole(cs.PeerCertificates[0])
	if err != nil {
		return "", fmt.Errorf("tls: %w", err)
	}
	if c != cluster {
		return "", fmt.Errorf("tls: the peer's certificate is for cluster %q, not %q", c, cluster)
	}
	return role, nil
}

type roleKey struct{}

type namesKey struct{}

// WithPeerNames returns ctx carrying the CertNames of a request's caller's
// verified certificate.
func WithPeerNames(ctx context.Context, names string) context.Context {
	return context.WithValue(ctx, namesKey{}, names)
}

// PeerNamesFrom returns what WithPeerNames put in ctx ("" when nothing).
func PeerNamesFrom(ctx context.Context) string {
	n, _ := ctx.Value(namesKey{}).(string)
	return n
}

// WithPeerRole returns ctx carrying the verified role of a request's caller.
func WithPeerRole(ctx context.Context, r Role) context.Context {
	return context.WithValue(ctx, roleKey{}, r)
}

// PeerRoleFrom returns the verified role WithPeerRole put in ctx; false
// when there is none (plaintext, or TLS off).
func PeerRoleFrom(ctx context.Context) (Role, bool) {
	r, ok := ctx.Value(roleKey{}).(Role)
	return r, ok && r != ""
}
