package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"golang.org/x/sys/unix"
)

func TestClassifyKmsgLine(t *testing.T) {
	tests := []struct {
		name, line string
		want       string // "" means not a disk error
	}{
		{"blk_update_request", "3,1201,5000000,-;blk_update_request: I/O error, dev sdb, sector 2048 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 0", "disk I/O error: sdb"},
		{"newer kernels", "3,1202,5000001,-;I/O error, dev nvme0n1, sector 34 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2", "disk I/O error: nvme0n1"},
		{"end_request", "3,12,500,-;end_request: I/O error, dev vdb, sector 99", "disk I/O error: vdb"},
		{"critical medium error", "3,13,500,-;blk_update_request: critical medium error, dev sdc, sector 77", "disk I/O error: sdc"},
		{"buffer I/O error", "3,14,500,-;Buffer I/O error on dev sda1, logical block 0, async page read", "disk I/O error: sda1"},
		{"buffer I/O error on device", "3,15,500,-;Buffer I/O error on device dm-2, logical block 1234", "disk I/O error: dm-2"},
		{"ext4 error", "2,16,500,-;EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0", "disk I/O error: sda1"},
		{"xfs metadata I/O error", `1,17,500,-;XFS (dm-0): metadata I/O error in "xfs_trans_read_buf_map" at daddr 0x2 len 1 error 5`, "disk I/O error: dm-0"},
		{"xfs log I/O error", "1,18,500,-;XFS (sdd): log I/O error -5", "disk I/O error: sdd"},
		{"btrfs error", "3,19,500,-;BTRFS error (device sde1 state EA): bdev /dev/sde1 errs: wr 1, rd 0, flush 0", "disk I/O error: sde1"},
		{"journal aborted", "2,20,500,-;Aborting journal on device sda3-8.", "disk I/O error: sda3"},
		{"no device: numbers masked", "3,21,500,-;nfs: server 10.1.0.5 I/O error 5 on read", "disk I/O error: nfs: server N.N.N.N I/O error N on read"},
		{"cdrom of a VM is ignored", "3,22,500,-;blk_update_request: I/O error, dev sr0, sector 0 op 0x0:(READ)", ""},
		{"floppy is ignored", "3,23,500,-;Buffer I/O error on dev fd0, logical block 0", ""},
		{"loop device is ignored", "3,24,500,-;I/O error, dev loop3, sector 0", ""},
		{"user-space facility cannot fake one", "11,25,500,-;blk_update_request: I/O error, dev sda, sector 0", ""},
		{"continuation line", " DEVICE=b8:0", ""},
		{"unrelated kernel line", "6,26,500,-;e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex", ""},
		{"no prefix", "I/O error, dev sda, sector 0", ""},
		{"bad priority", "x,27,500,-;I/O error, dev sda, sector 0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := classifyKmsgLine(tt.line)
			if ok != (tt.want != "") || got != tt.want {
				t.Fatalf("classifyKmsgLine(%q) = %q, %v; want %q", tt.line, got, ok, tt.want)
			}
		})
	}
	// The same error on other sectors is the same fault: no flapping.
	a, _ := classifyKmsgLine("3,1,1,-;I/O error, dev sdb, sector 1 op 0x1:(WRITE)")
	b, _ := classifyKmsgLine("3,2,2,-;I/O error, dev sdb, sector 999 op 0x0:(READ)")
	if a != b {
		t.Fatalf("faults differ for one device: %q vs %q", a, b)
	}
}

func TestBusinessFault(t *testing.T) {
	up := linkState{Up: true}
	timeout := fmt.Errorf("dial tcp 10.0.0.1:22: %w", os.ErrDeadlineExceeded)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	noRoute := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	tests := []struct {
		name    string
		link    linkState
		results []probeResult
		want    string
	}{
		{"no targets, link up", up, nil, ""},
		{"no targets, link down", linkState{Reason: "interface eth1 is down"}, nil, "business network unreachable: interface eth1 is down"},
		{"interface missing", linkState{Reason: "interface eth9 not found"}, nil, "business network unreachable: interface eth9 not found"},
		{"one target answers", up, []probeResult{{"a:22", nil}}, ""},
		{"refused counts as an answer", up, []probeResult{{"a:22", refused}}, ""},
		{"some fail", up, []probeResult{{"a:22", timeout}, {"b:22", nil}}, ""},
		{"all fail with timeouts", up, []probeResult{{"a:22", timeout}, {"b:22", timeout}}, "business network unreachable: no probe target answered (timeout)"},
		{"all fail, no route", up, []probeResult{{"a:22", noRoute}}, "business network unreachable: no probe target answered (no route to host)"},
		{"all fail, mixed", up, []probeResult{{"a:22", noRoute}, {"b:22", timeout}}, "business network unreachable: no probe target answered (mixed errors)"},
		{"all fail, other", up, []probeResult{{"a:22", errors.New("boom")}}, "business network unreachable: no probe target answered (connect failed)"},
		{"link down beats answers", linkState{Reason: "interface eth1 has no carrier"}, []probeResult{{"a:22", nil}}, "business network unreachable: interface eth1 has no carrier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := businessFault(tt.link, tt.results); got != tt.want {
				t.Fatalf("businessFault = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNormalizeProbeTarget(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{in: "10.1.0.1", want: "10.1.0.1:22"},
		{in: "10.1.0.1:80", want: "10.1.0.1:80"},
		{in: "gw.example", want: "gw.example:22"},
		{in: " gw.example:443 ", want: "gw.example:443"},
		{in: "fd00::1", want: "[fd00::1]:22"},
		{in: "[fd00::1]", want: "[fd00::1]:22"},
		{in: "[fd00::1]:8080", want: "[fd00::1]:8080"},
		{in: "", wantErr: "empty"},
		{in: "10.1.0.1:", wantErr: "port"},
		{in: "10.1.0.1:0", wantErr: "port"},
		{in: "10.1.0.1:ssh", wantErr: "port"},
		{in: ":22", wantErr: "no host"},
	}
	for _, tt := range tests {
		got, err := NormalizeProbeTarget(tt.in)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("NormalizeProbeTarget(%q) = %q, %v; want error with %q", tt.in, got, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("NormalizeProbeTarget(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestDiskErrorHold(t *testing.T) {
	clk := clock.NewManual(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	var changes atomic.Int32
	h := New(Config{DiskErrorHold: 10 * time.Minute, Clock: clk, Changed: func() { changes.Add(1) }})

	h.noteKmsg("6,1,1,-;eth0: link up") // not a disk error
	h.notifyIfChanged()
	if f := h.Faults(); len(f) != 0 || changes.Load() != 0 {
		t.Fatalf("faults = %v, changes = %d after an unrelated line", f, changes.Load())
	}
	h.noteKmsg("3,2,2,-;blk_update_request: I/O error, dev sdb, sector 8 op 0x1:(WRITE)")
	h.notifyIfChanged()
	want := []string{"disk I/O error: sdb"}
	if f := h.Faults(); !slices.Equal(f, want) || changes.Load() != 1 {
		t.Fatalf("faults = %v, changes = %d; want %v, 1", f, changes.Load(), want)
	}
	// A repeat of the same fault is no change, and it extends the hold.
	clk.Advance(8 * time.Minute)
	h.noteKmsg("3,3,3,-;Buffer I/O error on dev sdb, logical block 1")
	h.notifyIfChanged()
	clk.Advance(8 * time.Minute)
	h.notifyIfChanged()
	if f := h.Faults(); !slices.Equal(f, want) || changes.Load() != 1 {
		t.Fatalf("16 min after the first line, 8 after the last: faults = %v, changes = %d; want %v, 1", f, changes.Load(), want)
	}
	clk.Advance(2*time.Minute + time.Second)
	h.notifyIfChanged()
	if f := h.Faults(); len(f) != 0 || changes.Load() != 2 {
		t.Fatalf("after the hold: faults = %v, changes = %d; want none, 2", f, changes.Load())
	}

	// Many devices collapse into one fault instead of overflowing the heartbeat.
	for i := range maxDiskErrorFaults + 5 {
		h.noteKmsg(fmt.Sprintf("3,%d,1,-;I/O error, dev vd%c, sector 0", 10+i, 'a'+i))
	}
	f := h.Faults()
	if len(f) != maxDiskErrorFaults+1 || !slices.Contains(f, faultDiskMore) {
		t.Fatalf("faults with many devices = %v", f)
	}
}

func TestStorageProbe(t *testing.T) {
	ok := t.TempDir()
	file := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(file, "images") // under a regular file: fails even for root
	missing := filepath.Join(t.TempDir(), "gone")

	var changes atomic.Int32
	h := New(Config{StoragePaths: []string{ok, notDir, missing}, KmsgPath: "-", Changed: func() { changes.Add(1) }})
	h.Check(context.Background())
	got := h.Faults()
	want := []string{
		"storage path " + missing + " not writable: open " + filepath.Join(missing, ProbeFile) + ": no such file or directory",
		"storage path " + notDir + " not writable: open " + filepath.Join(notDir, ProbeFile) + ": not a directory",
	}
	slices.Sort(want)
	if !slices.Equal(got, want) || changes.Load() != 1 {
		t.Fatalf("faults = %q, changes = %d\nwant %q, 1", got, changes.Load(), want)
	}
	data, err := os.ReadFile(filepath.Join(ok, ProbeFile))
	if err != nil || !strings.HasPrefix(string(data), "chime storage probe ") {
		t.Fatalf("probe file in the good dir: %q, %v", data, err)
	}
	// The same failures again are no change.
	h.Check(context.Background())
	if got := h.Faults(); !slices.Equal(got, want) || changes.Load() != 1 {
		t.Fatalf("second round: faults = %q, changes = %d", got, changes.Load())
	}
	// The path is repaired.
	if err := os.Mkdir(missing, 0o700); err != nil {
		t.Fatal(err)
	}
	h.Check(context.Background())
	if got := h.Faults(); len(got) != 1 || !strings.Contains(got[0], notDir) || changes.Load() != 2 {
		t.Fatalf("after repair: faults = %q, changes = %d", got, changes.Load())
	}
}

// TestStorageProbeHangs simulates a hung NFS mount: the probe blocks in
// fsync. The check must come back with a fault, and must not start a
// second probe on that path while the first is stuck.
func TestStorageProbeHangs(t *testing.T) {
	dir := t.TempDir()
	release := make(chan struct{})
	var calls atomic.Int32
	h := New(Config{StoragePaths: []string{dir}, StorageTimeout: 50 * time.Millisecond, KmsgPath: "-",
		StorageProbe: func(string) error {
			if calls.Add(1) == 1 {
				<-release // stuck in the kernel
			}
			return nil
		}})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	want := []string{"storage path " + dir + " not writable: probe did not finish within 50ms"}
	for round := 1; round <= 2; round++ {
		h.Check(context.Background())
		if got := h.Faults(); !slices.Equal(got, want) {
			t.Fatalf("round %d: faults = %q, want %q", round, got, want)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("round %d: %d probes started on a hung path, want 1", round, n)
		}
	}
	close(release) // the mount recovers: the stuck probe returns
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.Check(context.Background())
		if len(h.Faults()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fault did not clear after the probe returned: %q (probes: %d)", h.Faults(), calls.Load())
		}
	}
}

// TestDrainKmsgRecords feeds records through a non-blocking pipe.
func TestDrainKmsgRecords(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	write := func(s string) {
		if _, err := unix.Write(p[1], []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	collect := func(r string) { got = append(got, r) }
	buf := make([]byte, 16<<10)
	if err := drainKmsg(p[0], buf, collect); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v, %v", got, err)
	}
	write("3,1,1,-;I/O error, dev sdb, sector 1\n SUBSYSTEM=block\n DEVICE=b8:16\n")
	write("6,2,2,-;eth0 up\n")
	if err := drainKmsg(p[0], buf, collect); err != nil {
		t.Fatal(err)
	}
	want := []string{"3,1,1,-;I/O error, dev sdb, sector 1", "6,2,2,-;eth0 up"}
	if !slices.Equal(got, want) {
		t.Fatalf("records = %q, want %q", got, want)
	}

	// Through Health: the fault appears.
	h := New(Config{KmsgPath: "-"})
	write("3,3,3,-;EXT4-fs error (device sdb1): ext4_lookup: deleted inode referenced\n")
	if err := drainKmsg(p[0], buf, h.noteKmsg); err != nil {
		t.Fatal(err)
	}
	if f := h.Faults(); !slices.Equal(f, []string{"disk I/O error: sdb1"}) {
		t.Fatalf("faults = %q", f)
	}
}

// requireRoot skips a test that needs root, except in CI where it fails.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (CI=true: not skipping)")
	}
	t.Skip("needs root (network namespaces, SO_BINDTODEVICE, /dev/kmsg); run as root to include it")
}

// TestKmsgFollowsFromTheEnd opens the real kernel log: records logged
// before it was opened do not count, records after it do. It writes two
// harmless user-facility lines to the kernel log.
func TestKmsgFollowsFromTheEnd(t *testing.T) {
	requireRoot(t)
	tag := fmt.Sprintf("chimeh-test-%08x", rand.Uint32())
	logLine := func(s string) {
		f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
		if err != nil {
			t.Fatalf("write to the kernel log: %v", err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			t.Fatalf("write to the kernel log: %v", err)
		}
	}
	logLine(tag + " before\n")
	fd, err := openKmsg("/dev/kmsg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	logLine(tag + " after\n")

	var seen []string
	buf := make([]byte, 16<<10)
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(seen, func(s string) bool { return strings.HasSuffix(s, tag+" after") }) {
		if time.Now().After(deadline) {
			t.Fatalf("own record not read back; records with the tag: %q", seen)
		}
		err := drainKmsg(fd, buf, func(r string) {
			if strings.Contains(r, tag) {
				seen = append(seen, r)
			}
			if _, ok := classifyKmsgLine(r); ok && strings.Contains(r, tag) {
				t.Errorf("user-space record classified as a disk error: %q", r)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if slices.ContainsFunc(seen, func(s string) bool { return strings.HasSuffix(s, tag+" before") }) {
		t.Fatalf("a record logged before opening was read: %q", seen)
	}
}

func TestReadLinkMissing(t *testing.T) {
	got := readLink("chimeh-none0")
	if got.Up || got.Reason != "interface chimeh-none0 not found" {
		t.Fatalf("readLink(missing) = %+v", got)
	}
}

// TestBusinessProbeThroughInterface builds a business network: a bridge in
// the root namespace (the agent's business interface, 10.233.X.1/24) and a
// namespace on it over a veth pair with a TCP listener at 10.233.X.2. The
// probe through the bridge succeeds; through another interface it fails
// although the route exists (SO_BINDTODEVICE works); with the veth down the
// bridge loses its carrier and the fault names it.
func TestBusinessProbeThroughInterface(t *testing.T) {
	requireRoot(t)
	removeLeftovers(t)
	x := freeSubnet(t)
	// Names carry the test process's pid (links: at most 15 bytes), so that
	// removeLeftovers spares the network of a test running in another process.
	pid := strconv.Itoa(os.Getpid())
	br, vr, vn, ns := "chimeh-b"+pid, "chimeh-r"+pid, "chimeh-n"+pid, "chimeh-"+pid
	hostIP, peerIP := fmt.Sprintf("10.233.%d.1", x), fmt.Sprintf("10.233.%d.2", x)

	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", vr).Run()
		_ = exec.Command("ip", "link", "del", br).Run()
		_ = exec.Command("ip", "netns", "del", ns).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", br, "type", "bridge"},
		{"addr", "add", hostIP + "/24", "dev", br},
		{"link", "add", vr, "type", "veth", "peer", "name", vn},
		{"link", "set", vn, "netns", ns},
		{"link", "set", vr, "master", br},
		{"link", "set", vr, "up"},
		{"link", "set", br, "up"},
		{"-n", ns, "addr", "add", peerIP + "/24", "dev", vn},
		{"-n", ns, "link", "set", vn, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		ip(t, args...)
	}
	ln := listenInNetns(t, ns, net.JoinHostPort(peerIP, "0"))
	target := ln.Addr().String()
	refusedTarget := net.JoinHostPort(peerIP, "1") // nothing listens: the peer answers with RST

	ctx := context.Background()
	h := New(Config{BusinessInterface: br, BusinessProbes: []string{target, refusedTarget},
		ProbeTimeout: 2 * time.Second, KmsgPath: "-"})
	waitHealth(t, h, nil) // the bridge may take a moment to get its carrier

	// Bound to another interface the connect fails, though an unbound one works.
	if err := dialThrough(ctx, "lo", target, 2*time.Second); err == nil {
		t.Fatalf("probe bound to lo reached %s: the socket is not bound to the interface", target)
	} else {
		t.Logf("probe bound to lo: %v", err)
	}
	if c, err := net.DialTimeout("tcp", target, 2*time.Second); err != nil {
		t.Fatalf("unbound connect to %s: %v", target, err)
	} else {
		c.Close()
	}

	// Every target failing while the link is up: a fault; one answering: none.
	dead := net.JoinHostPort(fmt.Sprintf("10.233.%d.77", x), "22")
	hDead := New(Config{BusinessInterface: br, BusinessProbes: []string{dead}, ProbeTimeout: 500 * time.Millisecond, KmsgPath: "-"})
	hDead.Check(ctx)
	if f := hDead.Faults(); len(f) != 1 || !strings.HasPrefix(f[0], "business network unreachable: no probe target answered (") {
		t.Fatalf("faults with a dead target = %q", f)
	}
	hSome := New(Config{BusinessInterface: br, BusinessProbes: []string{dead, target}, ProbeTimeout: 500 * time.Millisecond, KmsgPath: "-"})
	hSome.Check(ctx)
	if f := hSome.Faults(); len(f) != 0 {
		t.Fatalf("faults with one of two targets answering = %q", f)
	}

	// The veth (the bridge's only port) goes down: no carrier.
	ip(t, "link", "set", vr, "down")
	waitHealth(t, h, []string{"business network unreachable: interface " + br + " has no carrier"})
	ip(t, "link", "set", vr, "up")
	waitHealth(t, h, nil)
	ip(t, "link", "set", br, "down")
	waitHealth(t, h, []string{"business network unreachable: interface " + br + " is down"})
	ip(t, "link", "set", br, "up")
	waitHealth(t, h, nil)
	ip(t, "link", "del", vr)
	ip(t, "link", "del", br)
	waitHealth(t, h, []string{"business network unreachable: interface " + br + " not found"})
}

// waitHealth runs checks until the faults are want, or fails with the last seen.
func waitHealth(t *testing.T, h *Checker, want []string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h.Check(context.Background())
		got := h.Faults()
		if slices.Equal(got, want) || (len(want) == 0 && len(got) == 0) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("faults = %q, want %q", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// removeLeftovers deletes namespaces and links of earlier runs (prefix
// chimeh-) whose test process is gone, or is this one.
func removeLeftovers(t *testing.T) {
	t.Helper()
	stale := func(name string) bool {
		pid, err := strconv.Atoi(strings.TrimLeft(strings.TrimPrefix(name, "chimeh-"), "brn"))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			return true
		}
		return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "chimeh-") && stale(f[0]) {
			_ = exec.Command("ip", "netns", "del", f[0]).Run()
		}
	}
	out, err = exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link show: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line) // "7: chimeh-r1234@if6: <...>"
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, "chimeh-") && stale(name) {
			_ = exec.Command("ip", "link", "del", name).Run()
		}
	}
}

// freeSubnet picks X such that 10.233.X.0/24 appears in no route or address.
func freeSubnet(t *testing.T) int {
	t.Helper()
	routes, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	addrs, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		t.Fatalf("ip addr: %v", err)
	}
	used := string(routes) + string(addrs)
	// First choice by pid: two test processes running at once do not race
	// for the same subnet.
	for _, x := range append([]int{os.Getpid() % 250}, rand.Perm(250)...) {
		x += 2
		if !strings.Contains(used, fmt.Sprintf("10.233.%d.", x)) {
			return x
		}
	}
	t.Fatal("no free 10.233.X.0/24")
	return 0
}

// listenInNetns opens a TCP listener inside the named namespace and
// accepts (and closes) connections until the test ends. The listening
// socket belongs to the namespace it was created in.
func listenInNetns(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is left in the namespace and never unlocked: Go
		// discards it when this goroutine ends.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("listen in %s: %v", ns, r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	go func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return r.ln
}

// fakeNet is a BusinessNet whose link and targets a test sets.
type fakeNet struct {
	up      bool
	answers map[string]error // target → Dial's answer
}

func (f *fakeNet) Link(iface string) (bool, string) {
	if !f.up {
		return false, "interface " + iface + " is down"
	}
	return true, ""
}

func (f *fakeNet) Dial(_ context.Context, _, target string, _ time.Duration) error {
	return f.answers[target]
}

// TestBusinessNetHook drives the business check through Config.BusinessNet
// (the simulator's hook): the link's state and the targets' answers decide
// the fault as the kernel's would.
func TestBusinessNetHook(t *testing.T) {
	refused := fmt.Errorf("dial tcp: %w", syscall.ECONNREFUSED)
	timeout := fmt.Errorf("dial tcp: %w", os.ErrDeadlineExceeded)
	tests := []struct {
		name    string
		up      bool
		answers map[string]error
		want    string // "" = no fault
	}{
		{"link down", false, nil, "business network unreachable: interface biz0 is down"},
		{"one target refuses", true, map[string]error{"a:9": refused, "b:9": timeout}, ""},
		{"one target connects", true, map[string]error{"a:9": nil, "b:9": timeout}, ""},
		{"every target times out", true, map[string]error{"a:9": timeout, "b:9": timeout}, "business network unreachable: no probe target answered (timeout)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := New(Config{BusinessInterface: "biz0", BusinessProbes: []string{"a:9", "b:9"}, KmsgPath: "-",
				StoragePaths: nil, BusinessNet: &fakeNet{up: tc.up, answers: tc.answers}})
			h.Check(context.Background())
			got := h.Faults()
			if tc.want == "" && len(got) != 0 || tc.want != "" && !slices.Equal(got, []string{tc.want}) {
				t.Fatalf("faults = %q, want %q", got, tc.want)
			}
		})
	}
}
