package api

import (
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/chime-ha/chime/chime/structs"
)

// MaxHostLen bounds a host name in an address (RFC 1035's 253).
const MaxHostLen = 253

// MigrationSchemes are the libvirt URI schemes a node may advertise as its
// migration_uri.
var MigrationSchemes = []string{"qemu+tcp", "qemu+tls", "tcp"}

// ValidateHost checks an IP address or a DNS name: nothing a URL could
// smuggle a path, a query, credentials or a second host through.
func ValidateHost(field, h string) error {
	if h == "" {
		return structs.Invalid(field, "host is required")
	}
	if net.ParseIP(h) != nil {
		return nil
	}
	if len(h) > MaxHostLen {
		return structs.Invalid(field, "host is at most %d characters, got %d", MaxHostLen, len(h))
	}
	for _, label := range strings.Split(h, ".") {
		if structs.ValidateName(field, strings.ToLower(label)) != nil {
			return structs.Invalid(field, "host %q is neither an IP address nor a DNS name", h)
		}
	}
	return nil
}

// ValidateHostPort checks "host:port": an IP address or a DNS name and a
// port 1..65535, nothing else (no scheme, path, query or user info).
func ValidateHostPort(field, a string) error {
	if a == "" {
		return structs.Invalid(field, "is required (host:port)")
	}
	if len(a) > MaxHostLen+8 {
		return structs.Invalid(field, "at most %d characters, got %d", MaxHostLen+8, len(a))
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return structs.Invalid(field, "%q is not host:port", a)
	}
	if err := ValidateHost(field, host); err != nil {
		return err
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
		return structs.Invalid(field, "%q: port must be 1..65535", a)
	}
	return nil
}

// ValidateMigrationURI checks a libvirt migration URI: scheme qemu+tcp,
// qemu+tls or tcp; a valid host (and optional port); for qemu+* the path
// /system and nothing else; no user info, query or fragment.
func ValidateMigrationURI(field, s string) error {
	if len(s) > MaxHostLen+32 {
		return structs.Invalid(field, "at most %d characters, got %d", MaxHostLen+32, len(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return structs.Invalid(field, "%q is not a URI", s)
	}
	ok := false
	for _, sc := range MigrationSchemes {
		ok = ok || u.Scheme == sc
	}
	if !ok {
		return structs.Invalid(field, "%q: scheme must be one of %s", s, strings.Join(MigrationSchemes, ", "))
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return structs.Invalid(field, "%q: no user info, query or fragment allowed", s)
	}
	want := "/system"
	if u.Scheme == "tcp" {
		want = ""
	}
	if u.Path != want {
		return structs.Invalid(field, "%q: path must be %q", s, want)
	}
	if err := ValidateHost(field, u.Hostname()); err != nil {
		return err
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return structs.Invalid(field, "%q: port must be 1..65535", s)
		}
	}
	return nil
}
