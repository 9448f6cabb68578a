package hypervisor

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

func TestParseHostUUID(t *testing.T) {
	caps := func(inner string) string {
		return "<capabilities><host>" + inner + "<cpu><arch>x86_64</arch></cpu></host></capabilities>"
	}
	for _, tc := range []struct {
		name, xml, want, errHas string
	}{
		{name: "canonical", xml: caps("<uuid>3f2504e0-4f89-41d3-9a0c-0305e82c3301</uuid>"), want: "3f2504e0-4f89-41d3-9a0c-0305e82c3301"},
		{name: "upper case and blanks", xml: caps("<uuid>\n  3F2504E0-4F89-41D3-9A0C-0305E82C3301 </uuid>"), want: "3f2504e0-4f89-41d3-9a0c-0305e82c3301"},
		{name: "missing", xml: caps(""), errHas: "no <host><uuid>"},
		{name: "malformed", xml: caps("<uuid>not-a-uuid</uuid>"), errHas: `"not-a-uuid" is not a UUID`},
		{name: "all zeros", xml: caps("<uuid>00000000-0000-0000-0000-000000000000</uuid>"), errHas: "placeholder"},
		{name: "all ones", xml: caps("<uuid>ffffffff-ffff-ffff-ffff-ffffffffffff</uuid>"), errHas: "placeholder"},
		{name: "not XML", xml: "<capabilities><host>", errHas: "capabilities XML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHostUUID(tc.xml)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("ParseHostUUID = %q, %v; want an error containing %q", got, err, tc.errHas)
				}
				if !strings.Contains(err.Error(), "host uuid") {
					t.Errorf("error %q does not name the field (host uuid)", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseHostUUID = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestDriverHostUUID reads the host UUID from the real libvirtd and checks
// it against `virsh capabilities` when virsh is installed.
func TestDriverHostUUID(t *testing.T) {
	d := openDriver(t, "")
	got, err := d.HostUUID(context.Background())
	if err != nil {
		t.Fatalf("HostUUID: %v", err)
	}
	if again, err := d.HostUUID(context.Background()); err != nil || again != got {
		t.Fatalf("second HostUUID = %q, %v; want %q (stable)", again, err, got)
	}
	out, err := exec.Command("virsh", "-c", testURI(), "capabilities").Output()
	if err != nil {
		t.Logf("virsh capabilities: %v (not compared)", err)
		return
	}
	want, err := ParseHostUUID(string(out))
	if err != nil {
		t.Fatalf("virsh capabilities: %v", err)
	}
	if got != want {
		t.Fatalf("HostUUID = %q, virsh capabilities say %q", got, want)
	}
}
