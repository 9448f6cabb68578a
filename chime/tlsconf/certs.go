package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sort"
	"strings"
	"time"
)

// Role is what a certificate's holder is to the cluster.
type Role string

// The roles a certificate can carry.
const (
	RoleServer Role = "server" // a chime server: Raft peer, API server
	RoleAgent  Role = "agent"  // a chime agent on a hypervisor
	RoleCLI    Role = "cli"    // an operator's command line (a client only)
)

// Roles are every role, in a stable order.
var Roles = []Role{RoleServer, RoleAgent, RoleCLI}

// DefaultCluster is the cluster name of certificates made without one.
const DefaultCluster = "global"

// Defaults of the validity periods, as Nomad's.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// domain is the last label of every role name.
const domain = "chime"

// RoleName is the DNS name a certificate of role carries in cluster:
// "server.global.chime".
func RoleName(role Role, cluster string) string {
	return string(role) + "." + cluster + "." + domain
}

// ValidRole reports whether r is one of Roles.
func ValidRole(r Role) bool {
	for _, k := range Roles {
		if r == k {
			return true
		}
	}
	return false
}

// ValidateCluster checks a cluster name: one DNS label (lower-case letters,
// digits and '-', 1..63 characters, no leading or trailing '-'). field
// names the flag in the error.
func ValidateCluster(field, cluster string) error {
	if cluster == "" || len(cluster) > 63 {
		return fmt.Errorf("%s: %q must be 1 to 63 characters", field, cluster)
	}
	for i, c := range cluster {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(cluster)-1
		if !ok {
			return fmt.Errorf("%s: %q is not a DNS label (lower-case letters, digits, inner '-')", field, cluster)
		}
	}
	return nil
}

// CAOptions say how to make a CA. The zero value is a CA for
// DefaultCluster valid for DefaultCAValidity from now.
type CAOptions struct {
	Cluster   string        // goes into the common name only; "" is DefaultCluster
	Validity  time.Duration // 0 is DefaultCAValidity
	NotBefore time.Time     // zero: now (a minute back, for clock skew)
}

// CreateCA makes a new CA key and self-signed certificate, PEM-encoded.
func CreateCA(o CAOptions) (certPEM, keyPEM []byte, err error) {
	if o.Cluster == "" {
		o.Cluster = DefaultCluster
	}
	if err := ValidateCluster("--cluster", o.Cluster); err != nil {
		return nil, nil, err
	}
	if o.Validity == 0 {
		o.Validity = DefaultCAValidity
	}
	if o.Validity < 0 {
		return nil, nil, fmt.Errorf("--days: the validity must be positive, got %s", o.Validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	nb := notBefore(o.NotBefore)
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	name := pkix.Name{CommonName: "Chime CA " + o.Cluster, Organization: []string{"chime"}}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               name,
		Issuer:                name,
		NotBefore:             nb,
		NotAfter:              nb.Add(o.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
		AuthorityKeyId:        skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// CA is a loaded CA that can sign certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// LoadCA parses a CA certificate and its private key (PEM).
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, fmt.Errorf("--ca-file: the certificate of %q is not a CA certificate", cert.Subject.CommonName)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--ca-key-file: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("--ca-key-file: the key does not belong to the certificate of --ca-file")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertOptions say which certificate to issue.
type CertOptions struct {
	Role      Role          // required
	Cluster   string        // "" is DefaultCluster
	Validity  time.Duration // 0 is DefaultCertValidity
	NotBefore time.Time     // zero: now (a minute back, for clock skew)
	DNSNames  []string      // extra DNS names besides the role name (and localhost for servers and agents)
	// CommonName is the subject's common name; "" is the role name. It
	// names the holder (a host), which CertNames reports.
	CommonName string
	IPs        []net.IP // extra IP addresses (127.0.0.1 is added for servers and agents)
}

// Issue makes a key and a certificate of o.Role signed by ca, PEM-encoded.
// Server and agent certificates serve and dial (server and client
// authentication) and carry localhost and 127.0.0.1 besides their role
// name; CLI certificates only dial.
func (ca *CA) Issue(o CertOptions) (certPEM, keyPEM []byte, err error) {
	if !ValidRole(o.Role) {
		return nil, nil, fmt.Errorf("role: %q must be one of server, agent, cli", o.Role)
	}
	if o.Cluster == "" {
		o.Cluster = DefaultCluster
	}
	if err := ValidateCluster("--cluster", o.Cluster); err != nil {
		return nil, nil, err
	}
	if o.Validity == 0 {
		o.Validity = DefaultCertValidity
	}
	if o.Validity < 0 {
		return nil, nil, fmt.Errorf("--days: the validity must be positive, got %s", o.Validity)
	}
	for _, d := range o.DNSNames {
		if d == "" || strings.ContainsAny(d, " /:") {
			return nil, nil, fmt.Errorf("--additional-dnsname: %q is not a DNS name", d)
		}
		if r, _, ok := splitRoleName(d); ok {
			return nil, nil, fmt.Errorf("--additional-dnsname: %q is a role name (%s); a certificate carries one role", d, r)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	nb := notBefore(o.NotBefore)
	name := RoleName(o.Role, o.Cluster)
	cn := name
	if o.CommonName != "" {
		if len(o.CommonName) > 64 || strings.ContainsAny(o.CommonName, " /:,=") {
			return nil, nil, fmt.Errorf("--name: %q is not a common name (at most 64 characters, no spaces, '/', ':', ',', '=')", o.CommonName)
		}
		cn = o.CommonName
	}
	dns := []string{name}
	ips := append([]net.IP(nil), o.IPs...)
	ext := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if o.Role != RoleCLI {
		dns = append(dns, "localhost")
		ips = append(ips, net.IPv4(127, 0, 0, 1))
		ext = append(ext, x509.ExtKeyUsageServerAuth)
	}
	dns = append(dns, o.DNSNames...)
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: cn, Organization: []string{"chime"}},
		NotBefore:      nb,
		NotAfter:       nb.Add(o.Validity),
		KeyUsage:       x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:    ext,
		DNSNames:       dns,
		IPAddresses:    ips,
		SubjectKeyId:   skid,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
	}
	if nb.Add(o.Validity).After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter // never outlive the CA
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// splitRoleName parses "<role>.<cluster>.chime".
func splitRoleName(name string) (Role, string, bool) {
	parts := strings.Split(name, ".")
	if len(parts) != 3 || parts[2] != domain || !ValidRole(Role(parts[0])) || parts[1] == "" {
		return "", "", false
	}
	return Role(parts[0]), parts[1], true
}

// CertRole returns the one role and cluster a certificate carries.
func CertRole(cert *x509.Certificate) (Role, string, error) {
	var role Role
	var cluster string
	for _, d := range cert.DNSNames {
		r, c, ok := splitRoleName(d)
		if !ok {
			continue
		}
		if role != "" {
			return "", "", fmt.Errorf("certificate %q carries more than one role name (%s, %s)", cert.Subject.CommonName, RoleName(role, cluster), d)
		}
		role, cluster = r, c
	}
	if role == "" {
		return "", "", fmt.Errorf("certificate %q carries no role name (<role>.<cluster>.chime); make one with 'chime tls cert create'", cert.Subject.CommonName)
	}
	return role, cluster, nil
}

// maxCertNames bounds CertNames: the servers keep it in a node's binding.
const maxCertNames = 512

// CertNames is a certificate's identity of its holder: its common name
// unless that is the role name, then its DNS names and IP addresses
// besides the role name, localhost and 127.0.0.1, sorted and joined with
// ","; at most maxCertNames bytes. "" for a certificate that names no
// holder (one certificate shared by every agent).
func CertNames(cert *x509.Certificate) string {
	var names []string
	role, cluster, err := CertRole(cert)
	roleName := ""
	if err == nil {
		roleName = RoleName(role, cluster)
	}
	for _, d := range cert.DNSNames {
		if d != roleName && d != "localhost" {
			names = append(names, "dns:"+d)
		}
	}
	for _, ip := range cert.IPAddresses {
		if !ip.Equal(net.IPv4(127, 0, 0, 1)) {
			names = append(names, "ip:"+ip.String())
		}
	}
	sort.Strings(names)
	if cn := cert.Subject.CommonName; cn != "" && cn != roleName {
		names = append([]string{"cn:" + cn}, names...)
	}
	out := strings.Join(names, ",")
	if len(out) > maxCertNames {
		out = out[:maxCertNames]
	}
	return out
}

func notBefore(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	}
	return t.UTC()
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// parseCerts reads every CERTIFICATE block of a PEM file.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate in the file")
	}
	return out, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM private key in the file")
	}
	var k any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
