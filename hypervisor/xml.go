package hypervisor

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/chime-ha/chime/chime/structs"

	"libvirt.org/go/libvirtxml"
)

// MetaNamespace is the XML namespace of chime's metadata element.
const MetaNamespace = "https://chime.dev/xmlns/vm/1"

// metaPrefix is the prefix libvirt stores the metadata element under.
const metaPrefix = "chime"

// Domain types DomainXML accepts.
const (
	DomainTypeKVM  = "kvm"  // hardware virtualization through /dev/kvm
	DomainTypeQEMU = "qemu" // TCG emulation: slower, works without /dev/kvm
)

// tcgCPUModel is a CPU model every TCG build emulates. host-passthrough and
// host-model describe the host's CPU, which TCG does not provide.
const tcgCPUModel = "qemu64"

// DomainXML renders the libvirt domain definition of spec for the given
// domain type ("kvm" or "qemu"). It is pure: no libvirt connection is needed.
func DomainXML(spec DomainSpec, domainType string) (string, error) {
	if err := validateSpec(spec); err != nil {
		return "", err
	}
	var cpu *libvirtxml.DomainCPU
	switch domainType {
	case DomainTypeKVM:
		// No <cpu>: qemu's default model. On nested KVM hosts of the kind
		// chime is tested on, host-model and host-passthrough make qemu abort
		// ("failed to set MSR 0x10a") and an exact qemu64 fails libvirt's
		// check on Intel hosts (svm); the default starts everywhere and,
		// being the same on every host, migrates.
	case DomainTypeQEMU:
		cpu = &libvirtxml.DomainCPU{
			Mode:  "custom",
			Match: "exact",
			Model: &libvirtxml.DomainCPUModel{Value: tcgCPUModel, Fallback: "allow"},
		}
	default:
		return "", fmt.Errorf("domain type %q: want %q or %q", domainType, DomainTypeKVM, DomainTypeQEMU)
	}

	serialPort := uint(0)
	dom := &libvirtxml.Domain{
		Type: domainType,
		Name: DomainName(spec.Name),
		UUID: spec.VMID,
		Metadata: &libvirtxml.DomainMetadata{
			XML: metaElement(Meta{VMID: spec.VMID, Generation: spec.Generation}),
		},
		Memory:        &libvirtxml.DomainMemory{Value: uint(spec.MemoryMiB), Unit: "MiB"},
		CurrentMemory: &libvirtxml.DomainCurrentMemory{Value: uint(spec.MemoryMiB), Unit: "MiB"},
		VCPU:          &libvirtxml.DomainVCPU{Placement: "static", Value: uint(spec.VCPUs)},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		Features: &libvirtxml.DomainFeatureList{
			ACPI: &libvirtxml.DomainFeature{},
			APIC: &libvirtxml.DomainFeatureAPIC{},
		},
		CPU: cpu,
		// chime's agent restarts a crashed VM itself: libvirt must not.
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &serialPort},
			}},
			Consoles: []libvirtxml.DomainConsole{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &serialPort},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
		},
	}
	for i, path := range spec.Disks {
		src := &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}}
		if isBlockDevice(path) {
			// qemu's "file" driver refuses a block device; libvirt passes
			// <disk type='block'> to qemu's host_device driver.
			src = &libvirtxml.DomainDiskSource{Block: &libvirtxml.DomainDiskSourceBlock{Dev: path}}
		}
		dom.Devices.Disks = append(dom.Devices.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: diskFormat(path), Cache: "none"},
			Source: src,
			Target: &libvirtxml.DomainDiskTarget{Dev: virtioDiskName(i), Bus: "virtio"},
		})
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("marshal domain %s: %w", spec.VMID, err)
	}
	return out, nil
}

func validateSpec(spec DomainSpec) error {
	if !structs.IsUUID(spec.VMID) {
		return fmt.Errorf("vm id %q: not a lowercase uuid", spec.VMID)
	}
	if err := structs.ValidateName("name", spec.Name); err != nil {
		return fmt.Errorf("vm %s: %w", spec.VMID, err)
	}
	if spec.VCPUs < 1 {
		return fmt.Errorf("vm %s: vcpus %d: must be at least 1", spec.VMID, spec.VCPUs)
	}
	if spec.MemoryMiB < 1 {
		return fmt.Errorf("vm %s: memory %d MiB: must be at least 1", spec.VMID, spec.MemoryMiB)
	}
	if len(spec.Disks) > 26 {
		return fmt.Errorf("vm %s: %d disks: at most 26", spec.VMID, len(spec.Disks))
	}
	for _, p := range spec.Disks {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("vm %s: disk %q: want a clean absolute path", spec.VMID, p)
		}
	}
	return nil
}

// diskFormat tells an image's format by its path's extension, for files
// and block devices alike (a LUN holding a qcow2 image is named so by its
// device node or udev symlink); raw is the safe default because qemu never
// probes it for a backing file.
func diskFormat(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".qcow2", ".qcow":
		return "qcow2"
	default:
		return "raw"
	}
}

// isBlockDevice says whether a disk path names a block device (an iSCSI or
// FC LUN, an LVM volume, a multipath map): everything under /dev/. Decided
// by the path alone, so that the definition does not depend on what the
// agent's own mount namespace shows.
func isBlockDevice(path string) bool { return strings.HasPrefix(path, "/dev/") }

// virtioDiskName is vda, vdb, … for the i-th disk (i < 26).
func virtioDiskName(i int) string { return "vd" + string(rune('a'+i)) }

// metaElement is the <chime:vm> element as stored inside <metadata>.
func metaElement(m Meta) string {
	return "<" + metaPrefix + ":vm xmlns:" + metaPrefix + `="` + MetaNamespace + `"` + metaAttrs(m) + "/>"
}

// metaElementBare is the element without namespace, the form
// virDomainSetMetadata wants: libvirt adds the namespace itself.
func metaElementBare(m Meta) string { return "<vm" + metaAttrs(m) + "/>" }

func metaAttrs(m Meta) string {
	var b strings.Builder
	b.WriteString(` id="`)
	_ = xml.EscapeText(&b, []byte(m.VMID))
	b.WriteString(`" generation="` + strconv.FormatUint(m.Generation, 10) + `"`)
	return b.String()
}

// ParseMeta reads chime's metadata element out of a domain's XML. It returns
// nil, nil when the domain has none (a domain chime does not own), and an error
// when the XML is malformed or the element is invalid.
func ParseMeta(domainXML string) (*Meta, error) {
	dec := xml.NewDecoder(strings.NewReader(domainXML))
	// path holds the local names of the open elements.
	var path []string
	var found *Meta
	sawRoot := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse domain xml: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(path) == 0 {
				if sawRoot {
					return nil, errors.New("parse domain xml: more than one root element")
				}
				if t.Name.Local != "domain" || t.Name.Space != "" {
					return nil, fmt.Errorf("parse domain xml: root element <%s>, want <domain>", t.Name.Local)
				}
				sawRoot = true
			}
			if len(path) == 2 && path[1] == "metadata" && t.Name.Space == MetaNamespace && t.Name.Local == "vm" {
				if found != nil {
					return nil, errors.New("parse domain xml: more than one chime metadata element")
				}
				m, err := metaFromAttrs(t.Attr)
				if err != nil {
					return nil, err
				}
				found = m
			}
			path = append(path, t.Name.Local)
		case xml.EndElement:
			path = path[:len(path)-1]
		}
	}
	if !sawRoot {
		return nil, errors.New("parse domain xml: no <domain> element")
	}
	return found, nil
}

func metaFromAttrs(attrs []xml.Attr) (*Meta, error) {
	var m Meta
	var haveID, haveGen bool
	for _, a := range attrs {
		if a.Name.Space != "" {
			continue
		}
		switch a.Name.Local {
		case "id":
			m.VMID, haveID = a.Value, true
		case "generation":
			g, err := strconv.ParseUint(a.Value, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("chime metadata: generation %q: %w", a.Value, err)
			}
			m.Generation, haveGen = g, true
		}
	}
	if !haveID || !structs.IsUUID(m.VMID) {
		return nil, fmt.Errorf("chime metadata: id %q: not a lowercase uuid", m.VMID)
	}
	if !haveGen {
		return nil, errors.New("chime metadata: generation missing")
	}
	return &m, nil
}
