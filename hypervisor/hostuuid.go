package hypervisor

import (
	"context"
	"fmt"
	"strings"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"
)

// HostUUID returns the host's UUID as libvirtd reports it in its
// capabilities (<host><uuid>): the host_uuid of libvirtd.conf when set,
// else the one libvirtd read from SMBIOS or /etc/machine-id
// (host_uuid_source). The agent derives its node id from it (uniqueness
// rule 10, "identity is per host"), so it is lower-cased and refused when
// it cannot identify a host (all zeros, all ones).
func (d *Driver) HostUUID(ctx context.Context) (string, error) {
	var capsXML string
	err := d.call(ctx, "get capabilities", func(lv *libvirt.Libvirt) error {
		var err error
		capsXML, err = lv.ConnectGetCapabilities()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("host uuid: %w", err)
	}
	return ParseHostUUID(capsXML)
}

// ParseHostUUID reads <host><uuid> from libvirt's capabilities XML and
// returns it in the canonical lower-case form. An empty, malformed or
// placeholder UUID (all zeros or all ones, which boards ship and which
// libvirtd itself refuses from SMBIOS) is an error that says how to set
// one.
func ParseHostUUID(capsXML string) (string, error) {
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(capsXML); err != nil {
		return "", fmt.Errorf("host uuid: capabilities XML: %w", err)
	}
	raw := strings.TrimSpace(caps.Host.UUID)
	if raw == "" {
		return "", fmt.Errorf("host uuid: libvirt's capabilities name no <host><uuid>: set host_uuid in libvirtd.conf")
	}
	u, err := uuid.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("host uuid: %q is not a UUID: %w (set host_uuid in libvirtd.conf)", raw, err)
	}
	if u == uuid.Nil || u == uuid.Max {
		return "", fmt.Errorf("host uuid: %s identifies no host (a placeholder): set host_uuid in libvirtd.conf, or host_uuid_source = \"machine-id\"", u)
	}
	return u.String(), nil
}
