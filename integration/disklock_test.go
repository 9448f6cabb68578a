package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// TestDiskLockRefusesSecondStart shows the second wall of uniqueness
// (DESIGN.md rule 12) on real libvirt, for a qcow2 image on the lab's shared
// storage and for a LUN (a block device that every host reaches through a
// device node of its own, where only virtlockd can see the other host).
//
// A chime VM with the disk runs on host A, with its lease in the shared
// lockspace. Bypassing chime, a domain with the same disk started on host B
// through B's own libvirt is refused with a lock error (for the LUN:
// virtlockd's); once chime stops the VM, B's domain starts. Then the other
// way round: while B's domain holds the disk, `chime vm start` makes A's
// agent try, libvirt refuses, and the operator sees it (agent status: start
// refused, with libvirt's error; `chime vm show`: observed stopped
// (disk-locked)), with the retries backed off rather than one per pass.
// When B's domain stops, A's agent starts the VM on its next try.
// Throughout, no disk runs on two hosts at once, and no VM runs twice.
func TestDiskLockRefusesSecondStart(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	tests := []struct {
		name string
		kind string // "image" or "lun"
	}{
		{"qcow2 image", "image"},
		{"lun", "lun"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var disk string
			var err error
			if tt.kind == "lun" {
				disk, err = f.lab.CreateLUN(ctx, fmt.Sprintf("lun-%d", i), 16)
			} else {
				disk, err = f.lab.CreateDisk(ctx, fmt.Sprintf("locked-%d", i), 16)
			}
			if err != nil {
				t.Fatal(err)
			}
			refusedSecondStart(t, ctx, f, fmt.Sprintf("locked-%d", i), disk, tt.kind == "lun")
		})
	}
	u.check(t)
}

// refusedSecondStart plays the test's story for one disk. With leaseOnly,
// every refusal must be virtlockd's lease refusal.
func refusedSecondStart(t *testing.T, ctx context.Context, f *fleet, name, disk string, leaseOnly bool) {
	lockErr := diskLockError
	if leaseOnly {
		lockErr = leaseRefusal
	}
	dc := startDiskChecker(t, f.lab.Hosts, disk)

	vm := f.createVM(t, name, "--disk", disk)
	if len(vm.Spec.Disks) != 1 || vm.Spec.Disks[0] != disk {
		t.Fatalf("vm %s disks %v, want [%s]", vm.Name, vm.Spec.Disks, disk)
	}
	ai, _, _ := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	a, b := f.lab.Hosts[ai], f.lab.Hosts[(ai+1)%len(f.lab.Hosts)]
	t.Logf("vm %s runs on %s; the intruder goes to %s (domain type %s)", vm.Name, a.Name, b.Name, lab.DomainType())
	// libvirt takes the lease when it starts the CPUs, just after qemu appears.
	wait.For(t, 30*time.Second, "a lease in the lockspace while "+a.Name+" runs the disk", func() (bool, string) {
		leases, err := os.ReadDir(f.lab.LockspaceDir())
		return err == nil && len(leases) > 0, fmt.Sprintf("%s: %v (%v)", f.lab.LockspaceDir(), leases, err)
	})

	// B, bypassing chime: a domain of its own (no chime metadata, so B's
	// agent leaves it alone) on the same disk.
	intruder := randomID(t)
	defineDiskDomain(t, ctx, f, b, "intruder-"+intruder[:8], intruder, disk)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = b.Virsh(ctx, "destroy", intruder)
		_, _ = b.Virsh(ctx, "undefine", intruder)
	})
	_, err := b.Virsh(ctx, "start", intruder)
	if err == nil {
		t.Fatalf("%s started a second domain on disk %s while %s runs it", b.Name, disk, a.Name)
	}
	if !lockErr(err.Error()) {
		t.Fatalf("start on %s failed, but not with a lock error (lease only: %v): %v", b.Name, leaseOnly, err)
	}
	t.Logf("second start on %s refused: %v", b.Name, err)
	if procs, err := b.QemuProcesses(ctx); err != nil || procs[intruder] != 0 {
		t.Fatalf("qemu of the intruder on %s after the refusal: %v (%v)", b.Name, procs, err)
	}

	// Once chime stops the VM, the disk is free for B.
	f.mustChime(t, "vm", "stop", vm.Name)
	wait.For(t, 60*time.Second, vm.Name+" shut off on "+a.Name, func() (bool, string) {
		msg := f.expectDomState(a, vm.ID, "shut off", false)
		return msg == "", msg
	})
	if _, err := b.Virsh(ctx, "start", intruder); err != nil {
		t.Fatalf("start on %s after chime stopped the vm: %v", b.Name, err)
	}

	// Now B holds the disk and chime is asked to start the VM on A.
	f.mustChime(t, "vm", "start", vm.Name)
	var refusal string
	wait.For(t, 90*time.Second, "agent on "+a.Name+" shows the start of "+vm.Name+" refused twice", func() (bool, string) {
		st, err := f.agentStatus(ai)
		if err != nil {
			return false, err.Error()
		}
		for _, v := range st.VMs {
			if v.ID != vm.ID {
				continue
			}
			r := v.StartRefused
			if r == nil {
				return false, fmt.Sprintf("vm %s, no refusal (reconcile error %q)", v.State, st.ReconcileError)
			}
			if !lockErr(r.Error) {
				return false, "refusal without a lock error: " + r.Error
			}
			// Backed off: the next try is at least the first delay after
			// the first refusal, whatever the pass cadence.
			if !r.NextTry.After(r.Since.Add(4 * time.Second)) {
				return false, fmt.Sprintf("next try %s only %s after the first refusal", r.NextTry, r.NextTry.Sub(r.Since))
			}
			refusal = fmt.Sprintf("%d attempts since %s: %s", r.Attempts, r.Since.Format(time.TimeOnly), r.Error)
			return r.Attempts >= 2, refusal
		}
		return false, "vm not in agent status"
	})
	t.Logf("agent on %s: start refused, %s", a.Name, refusal)
	wait.For(t, 60*time.Second, "chime vm show "+vm.Name+" observes it "+agent.ReasonDiskLocked, func() (bool, string) {
		var got structs.VM
		if err := f.chimeJSON(&got, "vm", "show", vm.Name); err != nil {
			return false, err.Error()
		}
		if o := got.Observed; o != nil && o.Reason == agent.ReasonDiskLocked && o.State == structs.StateStopped {
			return true, ""
		}
		return false, fmt.Sprintf("observed %+v", got.Observed)
	})
	out, err := cli(ctx, "agent", "status", "--socket", filepath.Join(f.agentDir(ai), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "start refused: disk locked") {
		t.Errorf("`chime agent status` on %s does not show the refusal:\n%s", a.Name, out)
	}
	if procs, err := a.QemuProcesses(ctx); err != nil || procs[vm.ID] != 0 {
		t.Fatalf("qemu of %s on %s while %s holds the disk: %v (%v)", vm.Name, a.Name, b.Name, procs, err)
	}

	// B's domain stops: A's agent starts the VM on its next try (at most
	// lockRetryMax, one minute, later) and forgets the refusal.
	if _, err := b.Virsh(ctx, "destroy", intruder); err != nil {
		t.Fatal(err)
	}
	if hi, _, took := f.waitRunningOnOneHost(t, vm.ID, 2*time.Minute); hi != ai {
		t.Fatalf("vm %s runs on %s, want %s", vm.Name, f.lab.Hosts[hi].Name, a.Name)
	} else {
		t.Logf("vm %s running on %s %s after the intruder stopped", vm.Name, a.Name, took.Round(time.Second))
	}
	wait.For(t, 30*time.Second, "refusal gone from the agent status", func() (bool, string) {
		st, err := f.agentStatus(ai)
		if err != nil {
			return false, err.Error()
		}
		for _, v := range st.VMs {
			if v.ID == vm.ID && v.StartRefused != nil {
				return false, fmt.Sprintf("%+v", *v.StartRefused)
			}
		}
		return true, ""
	})
	if _, err := b.Virsh(ctx, "start", intruder); err == nil || !lockErr(err.Error()) {
		t.Fatalf("start on %s while chime runs the vm on %s again: %v; want a lock error", b.Name, a.Name, err)
	}

	f.mustChime(t, "vm", "delete", vm.Name)
	dc.check(t)
}

// diskLockError reports whether a start error names a disk lock: virtlockd's
// lease refusal ("Lockspace resource '…' is locked") or qemu's own image
// lock, which fires first for image files on one machine's filesystem (qemu
// opens its images before libvirt acquires the leases).
func diskLockError(msg string) bool {
	return leaseRefusal(msg) || strings.Contains(msg, `Failed to get "write" lock`)
}

// leaseRefusal reports whether a start error is virtlockd's refusal of a
// disk lease.
func leaseRefusal(msg string) bool {
	return strings.Contains(msg, "Lockspace resource") && strings.Contains(msg, "is locked")
}

// randomID returns a fresh lowercase uuid.
func randomID(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/sys/kernel/random/uuid")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// defineDiskDomain defines, with virsh on h, a domain without chime
// metadata that uses disk, rendered as chime's driver renders disks (qcow2
// file, or raw block device under /dev).
func defineDiskDomain(t *testing.T, ctx context.Context, f *fleet, h *lab.Host, name, id, disk string) {
	t.Helper()
	kind, format, attr := "file", "qcow2", "file"
	if strings.HasPrefix(disk, "/dev/") {
		kind, format, attr = "block", "raw", "dev"
	}
	xml := fmt.Sprintf(`<domain type='%s'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='%s' device='disk'>
      <driver name='qemu' type='%s' cache='none'/>
      <source %s='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/><console type='pty'/>
  </devices>
</domain>
`, lab.DomainType(), name, id, kind, format, attr, disk)
	path := filepath.Join(f.root, name+".xml")
	if err := os.WriteFile(path, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Virsh(ctx, "define", path); err != nil {
		t.Fatalf("define %s on %s: %v", name, h.Name, err)
	}
}

// diskChecker watches one disk image from outside chime: every 200 ms it
// lists the qemu processes of every host and records the moment two hosts
// run a guest (libvirt says running) whose qemu command line opens the
// image.
type diskChecker struct {
	disk   string
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	polls  int
	seen   int      // polls in which some host had the disk open
	double []string // "15:04:05.000 on hv1/123 and hv2/456"
}

func startDiskChecker(t *testing.T, hosts []*lab.Host, disk string) *diskChecker {
	ctx, cancel := context.WithCancel(context.Background())
	c := &diskChecker{disk: disk, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			var holders []string
			for _, h := range hosts {
				procs, err := h.QemuProcesses(ctx)
				if err != nil {
					continue
				}
				for uuid, pid := range procs {
					cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
					if err != nil || !strings.Contains(string(cmd), disk) {
						continue
					}
					// A start being refused has a qemu too, for moments,
					// paused before its CPUs ever ran: only a running
					// guest holds the disk.
					if st, err := h.Virsh(ctx, "domstate", uuid); err == nil && strings.TrimSpace(st) == "running" {
						holders = append(holders, fmt.Sprintf("%s/%d", h.Name, pid))
					}
				}
			}
			c.mu.Lock()
			c.polls++
			if len(holders) > 0 {
				c.seen++
			}
			if len(holders) > 1 {
				c.double = append(c.double, time.Now().Format("15:04:05.000")+" on "+strings.Join(holders, " and "))
			}
			c.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(c.stop)
	return c
}

func (c *diskChecker) stop() {
	c.cancel()
	<-c.done
}

// check stops the checker and fails t if two hosts ever had the disk open,
// or if it never saw the disk open at all (then it watched nothing).
func (c *diskChecker) check(t *testing.T) {
	t.Helper()
	c.stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	t.Logf("disk checker: %d polls, disk %s open in %d of them", c.polls, c.disk, c.seen)
	if len(c.double) > 0 {
		t.Errorf("disk %s open in qemu on two hosts at once:\n%s", c.disk, strings.Join(c.double, "\n"))
	}
	if c.seen == 0 {
		t.Errorf("disk checker never saw %s open: it watched nothing", c.disk)
	}
}
