package hypervisor

import (
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"

	"libvirt.org/go/libvirtxml"
)

const testUUID = "6f1c1d7e-3b0a-4d7e-9a43-0c2b9f0e5a11"

func TestDomainXML(t *testing.T) {
	base := DomainSpec{VMID: testUUID, Name: "web-1", VCPUs: 2, MemoryMiB: 64, Generation: 42}
	withDisks := base
	withDisks.Disks = []string{"/var/lib/chime/web-1.qcow2", "/var/lib/chime/data.img"}
	withLUN := base
	withLUN.Disks = []string{"/dev/mapper/san-lun7", "/srv/images/boot.qcow2"}
	withQcow2LUN := base
	withQcow2LUN.Disks = []string{"/dev/disk/by-id/san-web-1.qcow2"}

	tests := []struct {
		name       string
		spec       DomainSpec
		domainType string
		wantErr    string
		wantCPU    string // CPU mode
		wantDisks  []string
	}{
		{name: "kvm diskless", spec: base, domainType: "kvm", wantCPU: ""},
		{name: "tcg diskless", spec: base, domainType: "qemu", wantCPU: "custom"},
		{name: "disks by extension", spec: withDisks, domainType: "kvm", wantCPU: "", wantDisks: []string{"qcow2", "raw"}},
		{name: "block device and file", spec: withLUN, domainType: "qemu", wantCPU: "custom", wantDisks: []string{"raw", "qcow2"}},
		{name: "qcow2 on a block device", spec: withQcow2LUN, domainType: "kvm", wantCPU: "", wantDisks: []string{"qcow2"}},
		{name: "bad domain type", spec: base, domainType: "xen", wantErr: "domain type"},
		{name: "empty domain type", spec: base, domainType: "", wantErr: "domain type"},
		{name: "bad uuid", spec: DomainSpec{VMID: "nope", Name: "a", VCPUs: 1, MemoryMiB: 64}, domainType: "kvm", wantErr: "uuid"},
		{name: "upper-case uuid", spec: DomainSpec{VMID: strings.ToUpper(testUUID), Name: "a", VCPUs: 1, MemoryMiB: 64}, domainType: "kvm", wantErr: "uuid"},
		{name: "bad name", spec: DomainSpec{VMID: testUUID, Name: "Bad_Name", VCPUs: 1, MemoryMiB: 64}, domainType: "kvm", wantErr: "name"},
		{name: "zero vcpus", spec: DomainSpec{VMID: testUUID, Name: "a", VCPUs: 0, MemoryMiB: 64}, domainType: "kvm", wantErr: "vcpus"},
		{name: "zero memory", spec: DomainSpec{VMID: testUUID, Name: "a", VCPUs: 1, MemoryMiB: 0}, domainType: "kvm", wantErr: "memory"},
		{name: "relative disk", spec: DomainSpec{VMID: testUUID, Name: "a", VCPUs: 1, MemoryMiB: 64, Disks: []string{"disk.img"}}, domainType: "kvm", wantErr: "disk"},
		{name: "unclean disk", spec: DomainSpec{VMID: testUUID, Name: "a", VCPUs: 1, MemoryMiB: 64, Disks: []string{"/a/../etc/x"}}, domainType: "kvm", wantErr: "disk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := DomainXML(tt.spec, tt.domainType)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DomainXML error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DomainXML: %v", err)
			}
			var dom libvirtxml.Domain
			if err := dom.Unmarshal(out); err != nil {
				t.Fatalf("unmarshal generated xml: %v\n%s", err, out)
			}
			checks := []struct {
				what      string
				got, want any
			}{
				{"type", dom.Type, tt.domainType},
				{"name", dom.Name, "chime-" + tt.spec.Name},
				{"uuid", dom.UUID, tt.spec.VMID},
				{"memory", dom.Memory.Value, uint(tt.spec.MemoryMiB)},
				{"memory unit", dom.Memory.Unit, "MiB"},
				{"vcpus", dom.VCPU.Value, uint(tt.spec.VCPUs)},
				{"os type", dom.OS.Type.Type, "hvm"},
				{"boot devices", len(dom.OS.BootDevices), 1},
				{"boot dev", dom.OS.BootDevices[0].Dev, "hd"},
				{"on_crash", dom.OnCrash, "destroy"},
				{"on_poweroff", dom.OnPoweroff, "destroy"},
				{"serials", len(dom.Devices.Serials), 1},
				{"serial is pty", dom.Devices.Serials[0].Source.Pty != nil, true},
				{"graphics", len(dom.Devices.Graphics), 0},
				{"interfaces", len(dom.Devices.Interfaces), 0},
				{"disks", len(dom.Devices.Disks), len(tt.wantDisks)},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
			switch {
			case tt.wantCPU == "" && dom.CPU != nil:
				t.Errorf("cpu = %+v, want none (qemu's default model)", dom.CPU)
			case tt.wantCPU != "" && (dom.CPU == nil || dom.CPU.Mode != tt.wantCPU || dom.CPU.Model == nil || dom.CPU.Model.Value != tcgCPUModel):
				t.Errorf("cpu = %+v, want mode %s model %s", dom.CPU, tt.wantCPU, tcgCPUModel)
			}
			for i, format := range tt.wantDisks {
				if i >= len(dom.Devices.Disks) {
					break
				}
				disk := dom.Devices.Disks[i]
				path := tt.spec.Disks[i]
				var got string
				switch {
				case strings.HasPrefix(path, "/dev/") && disk.Source.Block != nil && disk.Source.File == nil:
					got = disk.Source.Block.Dev // <disk type='block'><source dev=…>
				case !strings.HasPrefix(path, "/dev/") && disk.Source.File != nil && disk.Source.Block == nil:
					got = disk.Source.File.File
				}
				if disk.Driver.Type != format || disk.Target.Bus != "virtio" || got != path {
					t.Errorf("disk %d = driver %+v target %+v source %+v, want %s virtio %s (block under /dev)",
						i, disk.Driver, disk.Target, disk.Source, format, path)
				}
			}
			meta, err := ParseMeta(out)
			if err != nil || meta == nil || *meta != (Meta{VMID: tt.spec.VMID, Generation: tt.spec.Generation}) {
				t.Errorf("ParseMeta(DomainXML) = %+v, %v; want id %s generation %d", meta, err, tt.spec.VMID, tt.spec.Generation)
			}
		})
	}
}

func TestParseMeta(t *testing.T) {
	meta := func(inner string) string {
		return "<domain type='kvm'><name>x</name><metadata>" + inner + "</metadata></domain>"
	}
	tests := []struct {
		name    string
		xml     string
		want    *Meta
		wantErr bool
	}{
		{name: "no metadata", xml: "<domain type='kvm'><name>x</name></domain>"},
		{name: "empty metadata", xml: meta("")},
		{name: "other namespace", xml: meta(`<app:vm xmlns:app="https://example.com/app" id="` + testUUID + `" generation="1"/>`)},
		{name: "as libvirt stores it", xml: meta(`<chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="7"/>`),
			want: &Meta{VMID: testUUID, Generation: 7}},
		{name: "other prefix same namespace", xml: meta(`<c:vm xmlns:c="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="0"></c:vm>`),
			want: &Meta{VMID: testUUID, Generation: 0}},
		{name: "namespace declared on root",
			xml:  `<domain xmlns:chime="https://chime.dev/xmlns/vm/1"><metadata><chime:vm id="` + testUUID + `" generation="18446744073709551615"/></metadata></domain>`,
			want: &Meta{VMID: testUUID, Generation: 18446744073709551615}},
		{name: "beside other metadata", xml: meta(`<app:x xmlns:app="urn:a"><vm/></app:x><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="3"/>`),
			want: &Meta{VMID: testUUID, Generation: 3}},
		{name: "outside metadata is ignored", xml: `<domain><description><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="3"/></description></domain>`},
		{name: "nested too deep is ignored", xml: meta(`<app:x xmlns:app="urn:a"><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="3"/></app:x>`)},
		{name: "unprefixed without namespace", xml: meta(`<vm id="` + testUUID + `" generation="3"/>`)},
		{name: "bad generation", xml: meta(`<chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="-1"/>`), wantErr: true},
		{name: "missing generation", xml: meta(`<chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `"/>`), wantErr: true},
		{name: "missing id", xml: meta(`<chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" generation="1"/>`), wantErr: true},
		{name: "id not a uuid", xml: meta(`<chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="web-1" generation="1"/>`), wantErr: true},
		{name: "two elements", xml: meta(`<chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="1"/><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="2"/>`), wantErr: true},
		{name: "truncated", xml: `<domain><metadata><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="`, wantErr: true},
		{name: "unclosed root", xml: `<domain><metadata>`, wantErr: true},
		{name: "wrong root", xml: `<network><metadata/></network>`, wantErr: true},
		{name: "two roots", xml: `<domain/><domain/>`, wantErr: true},
		{name: "empty", xml: "", wantErr: true},
		{name: "not xml", xml: "hello", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMeta(tt.xml)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseMeta = %+v, nil; want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMeta: %v", err)
			}
			switch {
			case got == nil && tt.want == nil:
			case got == nil || tt.want == nil || *got != *tt.want:
				t.Fatalf("ParseMeta = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMapState(t *testing.T) {
	tests := []struct {
		state, reason int32
		want, why     string
	}{
		{1, 1, StateRunning, "booted"},
		{1, 2, StateRunning, "migrated"},
		{1, 5, StateRunning, "unpaused"},
		{1, 3, StateRunning, "restored"},
		{2, 0, StateRunning, "unknown"},
		{3, 2, StateRunning, "migration"},
		{7, 0, StateRunning, "unknown"},
		{5, 3, StateCrashed, "crashed"},
		{6, 1, StateCrashed, "panicked"},
		{5, 1, StateStopped, "shutdown"},
		{5, 2, StateStopped, "destroyed"},
		{5, 4, StateStopped, "migrated"},
		{5, 0, StateStopped, "unknown"},
		{5, 99, StateStopped, "reason-99"},
		{4, 1, StateOther, "user"},
		{0, 0, StateOther, "unknown"},
		{42, 0, StateOther, "unknown"},
	}
	for _, tt := range tests {
		got, why := mapState(tt.state, tt.reason)
		if got != tt.want || why != tt.why {
			t.Errorf("mapState(%d, %d) = %s (%s), want %s (%s)", tt.state, tt.reason, got, why, tt.want, tt.why)
		}
	}
}

func TestEventNaming(t *testing.T) {
	tests := []struct {
		event, detail int32
		want, why     string
	}{
		{2, 0, "started", "booted"},
		{2, 1, "started", "migrated"},
		{5, 1, "stopped", "destroyed"},
		{5, 5, "stopped", "failed"},
		{5, 2, "stopped", "crashed"},
		{8, 0, "crashed", "panicked"},
		{1, 0, "undefined", "removed"},
		{5, 77, "stopped", "detail-77"},
		{99, 1, "event-99", "detail-1"},
		{-1, -1, "event--1", "detail--1"},
	}
	for _, tt := range tests {
		got, why := eventNaming(tt.event, tt.detail)
		if got != tt.want || why != tt.why {
			t.Errorf("eventNaming(%d, %d) = %s (%s), want %s (%s)", tt.event, tt.detail, got, why, tt.want, tt.why)
		}
	}
}

func FuzzParseMeta(f *testing.F) {
	for _, dt := range []string{DomainTypeKVM, DomainTypeQEMU} {
		out, err := DomainXML(DomainSpec{VMID: testUUID, Name: "fuzz", VCPUs: 1, MemoryMiB: 64, Generation: 9, Disks: []string{"/d.qcow2"}}, dt)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(out)
	}
	f.Add(`<domain><metadata><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id="` + testUUID + `" generation="1"/></metadata></domain>`)
	f.Add(`<domain xmlns:chime="https://chime.dev/xmlns/vm/1"><metadata><chime:vm id="x" generation="1"/></metadata></domain>`)
	f.Add(`<domain><metadata><x:vm xmlns:x="urn:other"/></metadata></domain>`)
	f.Add(`<domain>`)
	f.Add("")
	f.Fuzz(func(t *testing.T, doc string) {
		meta, err := ParseMeta(doc)
		if err != nil && meta != nil {
			t.Fatalf("ParseMeta returned both %+v and %v", meta, err)
		}
		if meta != nil && !structs.IsUUID(meta.VMID) {
			t.Fatalf("ParseMeta accepted vm id %q", meta.VMID)
		}
	})
}
