package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/integration/wait"
)

// testPrefix keeps the test's lab apart from a person's "chime" lab.
const testPrefix = "chimet"

// requireLab skips when this machine cannot run a lab, but fails in CI,
// where .ci/run installs and starts everything the lab needs.
func requireLab(t *testing.T) {
	t.Helper()
	if err := Requirements(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("lab cannot run in CI: %v", err)
		}
		t.Skipf("lab needs root, libvirtd and qemu (run `just deps` as root): %v", err)
	}
}

func TestNamesMatchOnlyTheirPrefix(t *testing.T) {
	tests := []struct {
		prefix, name string
		kind         string // netns, link, dir or lun
		want         bool
	}{
		{"chime", "chime-hv1", "netns", true},
		{"chime", "chime-hv12", "netns", true},
		{"chime", "chimet-hv1", "netns", false},
		{"chime", "chime-hv", "netns", false},
		{"chime", "chime-hv1x", "netns", false},
		{"chime", "chimem0", "link", true},
		{"chime", "chimeb0", "link", true},
		{"chime", "chimeh3m", "link", true},
		{"chime", "chimeh3b", "link", true},
		{"chime", "chimetm0", "link", false},
		{"chime", "chimeth1m", "link", false},
		{"chime", "eth0", "link", false},
		{"chime", "/tmp/x/chime-hv2/run/libvirt", "dir", true},
		{"chime", "/tmp/x/chime-hv2/lib/libvirt", "dir", true},
		{"chime", "/tmp/x/chimet-hv2/run/libvirt", "dir", false},
		{"chime", "/tmp/x/chime-hv2/san", "dir", true},
		{"chime", "/tmp/x/chime-hv2/sand", "dir", false},
		{"chime", "/run/libvirt", "dir", false},
		{"chime", "/tmp/x/shared/images/chime-lun-lun1.img", "lun", true},
		{"chime", "/tmp/x/shared/images/chime-lun-lun1.img (deleted)", "lun", true},
		{"chime", "/tmp/x/shared/images/chimet-lun-lun1.img", "lun", false},
		{"chime", "/tmp/x/shared/images/img1.qcow2", "lun", false},
		{"chime", "/tmp/chime-lun-lun1.img", "lun", false},
	}
	for _, tt := range tests {
		t.Run(tt.prefix+"/"+tt.kind+"/"+tt.name, func(t *testing.T) {
			n := namesFor(tt.prefix)
			re := map[string]interface{ MatchString(string) bool }{"netns": n.netns, "link": n.link, "dir": n.dir, "lun": n.lun}[tt.kind]
			if got := re.MatchString(tt.name); got != tt.want {
				t.Fatalf("%s %q matches prefix %q: got %v, want %v", tt.kind, tt.name, tt.prefix, got, tt.want)
			}
		})
	}
}

func TestLayout(t *testing.T) {
	cfg := Config{Prefix: "chime", Hosts: MaxHosts, Dir: t.TempDir()}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	l := newLab(cfg, 1)
	mgmt, biz := netip.MustParsePrefix(l.MgmtSubnet), netip.MustParsePrefix(l.BizSubnet)
	if mgmt.String() != "10.231.1.0/24" || biz.String() != "10.232.1.0/24" {
		t.Fatalf("subnets of index 1: %s, %s", mgmt, biz)
	}
	seen := map[string]bool{l.MgmtBridgeIP: true, l.BizBridgeIP: true}
	for _, ip := range l.ServerIPs {
		if !mgmt.Contains(netip.MustParseAddr(ip)) || seen[ip] {
			t.Fatalf("server ip %s: outside %s or duplicate", ip, mgmt)
		}
		seen[ip] = true
	}
	for _, h := range l.Hosts {
		for _, c := range []struct {
			ip     string
			subnet netip.Prefix
		}{{h.MgmtIP, mgmt}, {h.BizIP, biz}} {
			if !c.subnet.Contains(netip.MustParseAddr(c.ip)) || seen[c.ip] {
				t.Fatalf("host %s ip %s: outside %s or duplicate", h.Name, c.ip, c.subnet)
			}
			seen[c.ip] = true
		}
		for _, ifname := range []string{h.MgmtVeth, h.BizVeth, l.MgmtBridge, l.BizBridge} {
			if len(ifname) > 15 {
				t.Fatalf("interface name %q longer than 15", ifname)
			}
		}
		if !strings.HasPrefix(h.LibvirtURI(), "qemu:///system?socket=/") {
			t.Fatalf("libvirt uri %q is not an absolute socket uri", h.LibvirtURI())
		}
	}
	for _, bad := range []Config{
		{Prefix: "Chime", Hosts: 1, Dir: "x"},
		{Prefix: "chimechime", Hosts: 1, Dir: "x"},
		{Prefix: "chime", Hosts: 0, Dir: "x"},
		{Prefix: "chime", Hosts: MaxHosts + 1, Dir: "x"},
		{Prefix: "chime", Hosts: 1},
	} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("config %+v accepted, want an error", bad)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/a\040b/run`: "/tmp/a b/run",
		`/plain`:          "/plain",
		`/end\`:           `/end\`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLab builds a two-host lab and checks what the integration tests rely
// on: each libvirtd answers (unix socket and TCP), links can be cut and
// restored, qemu processes are attributed to the right host, a VM
// live-migrates between hosts, and Down leaves nothing behind.
func TestLab(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()

	start := time.Now()
	l, err := Up(ctx, Config{Prefix: testPrefix, Hosts: 2, Dir: t.TempDir(), Log: t.Logf})
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("down in cleanup: %v", err)
		}
	})
	t.Logf("lab up in %s (domain type %s)", time.Since(start).Round(time.Millisecond), DomainType())
	hv1, hv2 := l.Hosts[0], l.Hosts[1]

	t.Run("libvirtd answers on unix socket and tcp", func(t *testing.T) {
		for _, h := range l.Hosts {
			for _, uri := range []string{h.LibvirtURI(), h.TCPURI()} {
				if out, err := output(ctx, "virsh", "-c", uri, "version"); err != nil {
					t.Errorf("%s: virsh -c %s version: %v", h.Name, uri, err)
				} else if !strings.Contains(string(out), "QEMU") {
					t.Errorf("%s: virsh version says %q, want a QEMU hypervisor", h.Name, out)
				}
			}
		}
	})

	t.Run("hosts have no route out of the lab", func(t *testing.T) {
		lab := []netip.Prefix{netip.MustParsePrefix(l.MgmtSubnet), netip.MustParsePrefix(l.BizSubnet)}
		for _, h := range l.Hosts {
			out, err := h.Command(ctx, "ip", "-j", "-4", "route", "show").Output()
			if err != nil {
				t.Fatalf("%s routes: %v", h.Name, err)
			}
			var routes []struct{ Dst string }
			if err := json.Unmarshal(out, &routes); err != nil {
				t.Fatalf("%s routes %q: %v", h.Name, out, err)
			}
			for _, r := range routes {
				p, err := netip.ParsePrefix(r.Dst)
				if err != nil || !(lab[0].Contains(p.Addr()) || lab[1].Contains(p.Addr())) {
					t.Errorf("%s has route %q outside the lab subnets", h.Name, r.Dst)
				}
			}
		}
	})

	t.Run("links cut and restore", func(t *testing.T) {
		for _, c := range []struct{ network, addr string }{
			{NetMgmt, hv2.MgmtAddr(LibvirtPort)},
			{NetBiz, hv2.BizAddr(LibvirtPort)},
		} {
			if err := hv1.Reachable(ctx, c.addr, 5*time.Second); err != nil {
				t.Fatalf("%s before cut: %v", c.network, err)
			}
			if err := hv1.SetLink(ctx, c.network, false); err != nil {
				t.Fatal(err)
			}
			if err := hv1.Reachable(ctx, c.addr, 2*time.Second); err == nil {
				t.Errorf("%s cut: %s still reaches %s", c.network, hv1.Name, c.addr)
			}
			if _, err := hv1.Virsh(ctx, "version"); err != nil {
				t.Errorf("%s cut: unix socket of %s stopped answering: %v", c.network, hv1.Name, err)
			}
			if err := hv1.SetLink(ctx, c.network, true); err != nil {
				t.Fatal(err)
			}
			wait.For(t, 30*time.Second, c.network+" reachable again", func() (bool, string) {
				err := hv1.Reachable(ctx, c.addr, 2*time.Second)
				return err == nil, fmt.Sprint(err)
			})
		}
	})

	uuid := randomUUID()
	t.Run("domain runs on its host", func(t *testing.T) {
		xml := testDomainXML("chime-labtest-"+uuid[:8], uuid)
		path := filepath.Join(t.TempDir(), "domain.xml")
		if err := os.WriteFile(path, []byte(xml), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := hv1.Virsh(ctx, "define", path); err != nil {
			t.Fatalf("define: %v", err)
		}
		if _, err := hv1.Virsh(ctx, "start", uuid); err != nil {
			t.Fatalf("start: %v", err)
		}
		wait.For(t, 30*time.Second, "qemu of the vm on "+hv1.Name, func() (bool, string) {
			p1, err1 := hv1.QemuProcesses(ctx)
			p2, err2 := hv2.QemuProcesses(ctx)
			_, on1 := p1[uuid]
			_, on2 := p2[uuid]
			return err1 == nil && err2 == nil && on1 && !on2, fmt.Sprintf("hv1 %v (%v), hv2 %v (%v)", p1, err1, p2, err2)
		})
	})

	t.Run("live migration", func(t *testing.T) {
		start := time.Now()
		if _, err := hv1.Virsh(ctx, "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
			uuid, hv2.TCPURI(), "--migrateuri", "tcp://"+hv2.MgmtIP); err != nil {
			t.Fatalf("migrate: %v", err)
		}
		t.Logf("live migration %s -> %s took %s (domain type %s)", hv1.Name, hv2.Name, time.Since(start).Round(time.Millisecond), DomainType())
		wait.For(t, 30*time.Second, "qemu of the vm only on "+hv2.Name, func() (bool, string) {
			p1, err1 := hv1.QemuProcesses(ctx)
			p2, err2 := hv2.QemuProcesses(ctx)
			_, on1 := p1[uuid]
			_, on2 := p2[uuid]
			return err1 == nil && err2 == nil && !on1 && on2, fmt.Sprintf("hv1 %v (%v), hv2 %v (%v)", p1, err1, p2, err2)
		})
		if out, err := hv2.Virsh(ctx, "domstate", uuid); err != nil || !strings.Contains(out, "running") {
			t.Errorf("domstate on %s: %q, %v; want running", hv2.Name, out, err)
		}
		if _, err := hv1.Virsh(ctx, "dominfo", uuid); err == nil {
			t.Errorf("%s still defines the vm after --undefinesource", hv1.Name)
		}
	})

	t.Run("libvirtd restart keeps the vm", func(t *testing.T) {
		before, err := hv2.QemuProcesses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := hv2.StopLibvirtd(ctx); err != nil {
			t.Fatal(err)
		}
		if hv2.LibvirtdRunning() {
			t.Fatalf("libvirtd of %s still running after stop", hv2.Name)
		}
		if during, err := hv2.QemuProcesses(ctx); err != nil || during[uuid] != before[uuid] {
			t.Fatalf("qemu while libvirtd is down: %v (%v), want pid %d", during, err, before[uuid])
		}
		if err := hv2.StartLibvirtd(ctx); err != nil {
			t.Fatal(err)
		}
		if out, err := hv2.Virsh(ctx, "domstate", uuid); err != nil || !strings.Contains(out, "running") {
			t.Errorf("domstate after libvirtd restart: %q, %v; want running", out, err)
		}
	})

	t.Run("kill all powers the host off", func(t *testing.T) {
		if err := hv2.KillAll(ctx); err != nil {
			t.Fatal(err)
		}
		pids, err := hv2.Pids()
		if err != nil || len(pids) != 0 {
			t.Fatalf("processes in %s after KillAll: %v (%v)", hv2.Netns, pids, err)
		}
		if err := hv2.StartLibvirtd(ctx); err != nil {
			t.Fatalf("start libvirtd after power-off: %v", err)
		}
		if out, err := hv2.Virsh(ctx, "domstate", uuid); err != nil || strings.Contains(out, "running") {
			t.Errorf("domstate after power-off: %q, %v; want not running", out, err)
		}
	})

	if err := l.Down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	if exists, err := Exists(ctx, testPrefix); err != nil || exists {
		t.Fatalf("after down: lab exists %v (%v)", exists, err)
	}
	if pids, err := orphanPids(namesFor(testPrefix)); err != nil || len(pids) > 0 {
		t.Fatalf("after down: processes holding lab mounts %v (%v)", pids, err)
	}
	if err := Cleanup(ctx, testPrefix); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

// TestCleanupAfterCrash removes a lab whose namespace was deleted under its
// running daemons, as a crashed test run can leave it: Cleanup must find
// the daemons by their mounts alone.
func TestCleanupAfterCrash(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	const prefix = "chimec"
	l, err := Up(ctx, Config{Prefix: prefix, Hosts: 1, Dir: t.TempDir(), Log: t.Logf})
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() { _ = Cleanup(context.Background(), prefix) })
	h := l.Hosts[0]
	if err := run(ctx, "ip", "netns", "delete", h.Netns); err != nil {
		t.Fatal(err)
	}
	orphans, err := orphanPids(namesFor(prefix))
	if err != nil || len(orphans) == 0 {
		t.Fatalf("orphaned daemons of %s: %v (%v), want libvirtd, virtlogd and virtlockd", h.Name, orphans, err)
	}
	var comms []string
	for _, p := range orphans {
		comms = append(comms, procComm(p))
	}
	for _, want := range []string{"libvirtd", "virtlogd", "virtlockd"} {
		if !slices.Contains(comms, want) {
			t.Fatalf("orphaned daemons of %s: %v, want %s among them", h.Name, comms, want)
		}
	}
	if err := Cleanup(ctx, prefix); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if left, err := orphanPids(namesFor(prefix)); err != nil || len(left) > 0 {
		t.Fatalf("after cleanup: processes holding lab mounts %v (%v)", left, err)
	}
	if exists, err := Exists(ctx, prefix); err != nil || exists {
		t.Fatalf("after cleanup: lab exists %v (%v)", exists, err)
	}
}

// testDomainXML is a 64 MiB guest without OS, with the given disks
// (virtio, cache none as chime's driver renders them): qcow2 image files,
// or raw block devices for the LUNs under SANDir.
func testDomainXML(name, uuid string, disks ...string) string {
	var devs strings.Builder
	for i, d := range disks {
		kind, format, attr := "file", "qcow2", "file"
		if strings.HasPrefix(d, SANDir+"/") {
			kind, format, attr = "block", "raw", "dev"
		}
		fmt.Fprintf(&devs, `    <disk type='%s' device='disk'>
      <driver name='qemu' type='%s' cache='none'/>
      <source %s='%s'/>
      <target dev='vd%c' bus='virtio'/>
    </disk>
`, kind, format, attr, d, 'a'+i)
	}
	return fmt.Sprintf(`<domain type='%s'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices>
%s    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
`, DomainType(), name, uuid, devs.String())
}

// defineDomain defines a test domain on h from testDomainXML.
func defineDomain(t *testing.T, ctx context.Context, h *Host, name, uuid string, disks ...string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".xml")
	if err := os.WriteFile(path, []byte(testDomainXML(name, uuid, disks...)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Virsh(ctx, "define", path); err != nil {
		t.Fatalf("define %s on %s: %v", name, h.Name, err)
	}
}

// leaseRefused is virtlockd's refusal of a disk lease, as virsh prints it:
// "resource busy: Lockspace resource '<sha256 of the path>' is locked".
func leaseRefused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Lockspace resource") && strings.Contains(err.Error(), "is locked")
}

// imageLocked is qemu's own refusal of an image another qemu has open.
func imageLocked(err error) bool {
	return err != nil && strings.Contains(err.Error(), `Failed to get "write" lock`)
}

// TestSharedStorageDiskLock checks the lab's second wall (DESIGN.md
// uniqueness rule 12): every host runs a virtlockd with its lockspace on the
// shared storage, and libvirt refuses to start a domain on one host whose
// disk a qemu on another host holds.
//
// A LUN (one block device, a device node of its own on each host) shows
// that the refusal is virtlockd's: qemu's own image lock cannot see across
// the two nodes, so without the lockspace both starts would succeed. A qcow2
// file on the shared storage is refused too (there qemu's image lock, taken
// when qemu opens the image, fires before libvirt asks for the lease at CPU
// start). Once the first copy stops, or its host loses power (its virtlockd
// dies with it), the other host can start the disk.
func TestSharedStorageDiskLock(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	const prefix = "chimel"
	l, err := Up(ctx, Config{Prefix: prefix, Hosts: 2, Dir: t.TempDir(), Log: t.Logf})
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("down in cleanup: %v", err)
		}
		if devs, err := lunDevices(namesFor(prefix)); err != nil || len(devs) > 0 {
			t.Errorf("loop devices of the lab's LUNs after down: %v (%v)", devs, err)
		}
	})
	t.Logf("domain type %s", DomainType())
	hv1, hv2 := l.Hosts[0], l.Hosts[1]
	for _, h := range l.Hosts {
		if !h.VirtlockdRunning() {
			t.Fatalf("%s: no virtlockd after up", h.Name)
		}
	}
	for _, bad := range []string{"../escape", "", "A"} {
		if _, err := l.CreateDisk(ctx, bad, 16); err == nil {
			t.Errorf("CreateDisk accepted the name %q", bad)
		}
		if _, err := l.CreateLUN(ctx, bad, 16); err == nil {
			t.Errorf("CreateLUN accepted the name %q", bad)
		}
		if _, err := l.CreateQcow2LUN(ctx, bad, 16); err == nil {
			t.Errorf("CreateQcow2LUN accepted the name %q", bad)
		}
	}
	start := func(h *Host, uuid string) error {
		_, err := h.Virsh(ctx, "start", uuid)
		return err
	}
	mustStart := func(h *Host, uuid, what string) {
		t.Helper()
		if err := start(h, uuid); err != nil {
			t.Fatalf("%s: start on %s: %v", what, h.Name, err)
		}
	}
	noQemu := func(h *Host, what string) {
		t.Helper()
		if p, err := h.QemuProcesses(ctx); err != nil || len(p) > 0 {
			t.Fatalf("%s: qemu processes on %s after the refusal: %v (%v)", what, h.Name, p, err)
		}
	}

	t.Run("lun: virtlockd refuses a second host", func(t *testing.T) {
		lun, err := l.CreateLUN(ctx, "lun1", 16)
		if err != nil {
			t.Fatal(err)
		}
		u1, u2 := randomUUID(), randomUUID()
		defineDomain(t, ctx, hv1, "lun-a", u1, lun)
		defineDomain(t, ctx, hv2, "lun-b", u2, lun)
		mustStart(hv1, u1, "first copy")
		if leases, _ := os.ReadDir(l.LockspaceDir()); len(leases) == 0 {
			t.Errorf("lockspace %s is empty while %s runs a domain with a disk", l.LockspaceDir(), hv1.Name)
		}
		refused := func(h *Host, uuid, what string) {
			t.Helper()
			err := start(h, uuid)
			if !leaseRefused(err) {
				t.Fatalf("%s: start on %s: %v; want virtlockd's lease refusal", what, h.Name, err)
			}
			t.Logf("%s: %s refused: %v", what, h.Name, err)
		}
		refused(hv2, u2, "hv1 runs the lun")
		noQemu(hv2, "hv1 runs the lun")

		// virtlockd, not libvirtd, holds the lease: a libvirtd restart keeps it.
		if err := hv1.StopLibvirtd(ctx); err != nil {
			t.Fatal(err)
		}
		refused(hv2, u2, "hv1's libvirtd down")
		if err := hv1.StartLibvirtd(ctx); err != nil {
			t.Fatal(err)
		}
		refused(hv2, u2, "hv1's libvirtd back")

		if _, err := hv1.Virsh(ctx, "destroy", u1); err != nil {
			t.Fatal(err)
		}
		mustStart(hv2, u2, "hv1's copy stopped")
		refused(hv1, u1, "hv2 runs the lun")

		// Power loss releases the lease: the dead host's virtlockd is gone.
		if err := hv2.KillAll(ctx); err != nil {
			t.Fatal(err)
		}
		mustStart(hv1, u1, "hv2 lost power")
		if err := hv2.StartLibvirtd(ctx); err != nil {
			t.Fatal(err)
		}
		if !hv2.VirtlockdRunning() {
			t.Fatalf("%s: StartLibvirtd did not start virtlockd again", hv2.Name)
		}
		refused(hv2, u2, "hv2 powered on again")
		noQemu(hv2, "hv2 powered on again")
		if _, err := hv1.Virsh(ctx, "destroy", u1); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("qcow2 image: a second host is refused", func(t *testing.T) {
		disk, err := l.CreateDisk(ctx, "img1", 16)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.CreateDisk(ctx, "img1", 16); err == nil {
			t.Errorf("CreateDisk overwrote %s", disk)
		}
		u1, u2 := randomUUID(), randomUUID()
		defineDomain(t, ctx, hv1, "img-a", u1, disk)
		defineDomain(t, ctx, hv2, "img-b", u2, disk)
		mustStart(hv1, u1, "first copy")
		err = start(hv2, u2)
		if !leaseRefused(err) && !imageLocked(err) {
			t.Fatalf("start on %s while %s runs the image: %v; want a lock refusal", hv2.Name, hv1.Name, err)
		}
		t.Logf("%s refused: %v", hv2.Name, err)
		noQemu(hv2, "hv1 runs the image")
		if _, err := hv1.Virsh(ctx, "destroy", u1); err != nil {
			t.Fatal(err)
		}
		mustStart(hv2, u2, "hv1's copy stopped")
	})
}
