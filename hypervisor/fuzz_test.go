package hypervisor

import "testing"

// FuzzParseMeta (xml_test.go) reads fuzzed domain XML.

// FuzzDomainXMLRoundTrip: a spec DomainXML accepts yields XML whose
// metadata parses back to the spec's id and generation.
func FuzzDomainXMLRoundTrip(f *testing.F) {
	f.Add("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "web", 1, 64, "/var/lib/chime/web.qcow2", uint64(3))
	f.Add("a\"b<c", "x&y", 2, 128, "/dev/sdb", uint64(0))
	f.Fuzz(func(t *testing.T, id, name string, vcpus, mem int, disk string, gen uint64) {
		x, err := DomainXML(DomainSpec{VMID: id, Name: name, VCPUs: vcpus, MemoryMiB: mem, Disks: []string{disk}, Generation: gen}, "kvm")
		if err != nil {
			return
		}
		m, err := ParseMeta(x)
		if err != nil || m == nil {
			t.Fatalf("metadata of generated XML does not parse: %v\n%s", err, x)
		}
		if m.VMID != id || m.Generation != gen {
			t.Fatalf("metadata parsed back as %+v, want id %q generation %d", m, id, gen)
		}
	})
}
