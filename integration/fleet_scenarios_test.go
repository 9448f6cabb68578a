package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
	"github.com/google/uuid"
)

// TestFleet is issue 3's end-to-end check: real servers, real agents in
// their hosts' namespaces, real libvirtd and qemu. Every expectation is
// checked with libvirt (virsh against each host's libvirtd) or with the
// hosts' qemu processes, never with chime's own view alone. The subtests
// share one fleet and run in order; a uniqueness checker watches all of
// them for a VM running on two hosts.
func TestFleet(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	// Domains created by hand, which chime must leave alone.
	foreign := make(map[string]bool)

	t.Run("CreateStopStartDelete", func(t *testing.T) { testLifecycle(t, f) })
	t.Run("QemuKilledIsRestarted", func(t *testing.T) { testQemuKilled(t, f) })
	t.Run("AgentRestart", func(t *testing.T) { testAgentRestart(t, f, foreign) })
	t.Run("LibvirtdRestart", func(t *testing.T) { testLibvirtdRestart(t, f) })
	t.Run("TwentyVMs", func(t *testing.T) { testTwentyVMs(t, f, foreign) })
	u.check(t)
}

// testLifecycle: create → a qemu on exactly one host (the placed one);
// stop → shut off; start → running; delete → gone from libvirt.
func testLifecycle(t *testing.T, f *fleet) {
	vm := f.createVM(t, "life")
	hi, pid, took := f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
	h := f.lab.Hosts[hi]
	t.Logf("vm create → qemu running on %s (pid %d) %s after the CLI returned", h.Name, pid, took.Round(time.Millisecond))
	f.expectPlacedOn(t, "life", h.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xml, err := h.Virsh(ctx, "dumpxml", vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("<domain type='%s'", lab.DomainType()); !strings.Contains(xml, want) {
		t.Fatalf("domain type: want %s (lab.DomainType), libvirt has %.60q", want, xml)
	}
	f.waitVMState(t, "life", structs.StateRunning)

	f.mustChime(t, "vm", "stop", "life")
	took = wait.For(t, 60*time.Second, "life shut off on "+h.Name, func() (bool, string) {
		seen := f.expectDomState(h, vm.ID, "shut off", false)
		return seen == "", seen
	})
	t.Logf("vm stop → shut off on %s after %s (guest has no OS: shutdown grace, then destroy)", h.Name, took.Round(time.Millisecond))
	f.waitVMState(t, "life", structs.StateStopped)

	f.mustChime(t, "vm", "start", "life")
	hi2, _, took := f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
	if hi2 != hi {
		t.Fatalf("vm start: runs on %s, was placed on %s", f.lab.Hosts[hi2].Name, h.Name)
	}
	t.Logf("vm start → running on %s after %s", h.Name, took.Round(time.Millisecond))

	f.mustChime(t, "vm", "delete", "life")
	took = wait.For(t, 60*time.Second, "life gone from every host's libvirt", func() (bool, string) {
		for _, h := range f.lab.Hosts {
			if msg := f.expectDomState(h, vm.ID, "absent", false); msg != "" {
				return false, msg
			}
		}
		return true, ""
	})
	t.Logf("vm delete → domain undefined on %s after %s", h.Name, took.Round(time.Millisecond))
}

// testQemuKilled: kill -9 of a VM's qemu → the agent starts it again on
// the same host.
func testQemuKilled(t *testing.T, f *fleet) {
	vm := f.createVM(t, "crash")
	hi, pid, _ := f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
	h := f.lab.Hosts[hi]
	took := f.killQemuAndWaitRestart(t, hi, vm.ID, pid)
	t.Logf("kill -9 of qemu pid %d on %s → running again after %s", pid, h.Name, took.Round(time.Millisecond))
	f.waitVMState(t, "crash", structs.StateRunning)
}

// killQemuAndWaitRestart kills uuid's qemu (pid) on host hi and waits for a
// new qemu of the same VM on the same host and only there.
func (f *fleet) killQemuAndWaitRestart(t *testing.T, hi int, uuid string, pid int) time.Duration {
	t.Helper()
	h := f.lab.Hosts[hi]
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill qemu %d: %v", pid, err)
	}
	return wait.For(t, 60*time.Second, fmt.Sprintf("VM %s restarted on %s after kill -9 of pid %d", uuid, h.Name, pid), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			return false, err.Error()
		}
		if p := procs[uuid]; p == 0 || p == pid {
			st, _ := domState(ctx, h, uuid)
			return false, fmt.Sprintf("no new qemu process (libvirt: %s)", st)
		}
		hosts, err := f.where(ctx, uuid)
		if err != nil {
			return false, err.Error()
		}
		if len(hosts) != 1 || hosts[0] != h.Name {
			return false, fmt.Sprintf("libvirt runs it on %v", hosts)
		}
		return true, ""
	})
}

// testAgentRestart: kill -9 and start an agent (as systemd would), stop it
// with SIGTERM and start it, then kill and start it while all three servers
// are down: no VM is restarted,
// duplicated or lost, and a domain defined by hand is never touched.
func testAgentRestart(t *testing.T, f *fleet, foreign map[string]bool) {
	// A domain without chime metadata on every host.
	for _, h := range f.lab.Hosts {
		id := uuid.NewString()
		f.defineForeign(t, h, "byhand-"+h.Name, id)
		foreign[id] = true
	}
	keep := f.createVM(t, "keep")
	hi, _, _ := f.waitRunningOnOneHost(t, keep.ID, 60*time.Second)
	wait.For(t, 60*time.Second, "every host runs what is placed on it", func() (bool, string) {
		seen := f.converged(foreign)
		return seen == "", seen
	})

	ctx := context.Background()
	before, err := f.qemuSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func() string {
		now, err := f.qemuSnapshot(ctx)
		if err != nil {
			return err.Error()
		}
		return diffSnapshots(before, now)
	}
	t.Logf("qemu processes before the agent restarts: %v", before)

	// 1. The agent crashes and systemd starts it again.
	f.killAgent(hi)
	f.startAgent(hi)
	took := f.waitAgentSynced(t, hi)
	t.Logf("agent on %s restarted: synced after %s", f.lab.Hosts[hi].Name, took.Round(time.Millisecond))
	holdFor(t, 3*time.Second, "qemu processes unchanged after the agent restart", unchanged)
	f.waitNodesNormal(t, 30*time.Second)

	// 1b. systemctl restart: SIGTERM, then a new process. Stopping the
	// agent must leave the VMs alone.
	f.agents[hi].stop()
	holdFor(t, 2*time.Second, "qemu processes unchanged while the agent is stopped", unchanged)
	f.startAgent(hi)
	f.waitAgentSynced(t, hi)
	holdFor(t, 3*time.Second, "qemu processes unchanged after SIGTERM and start", unchanged)

	// 2. All servers down; the agent crashes and starts again.
	f.ss.stopAll()
	f.killAgent(hi)
	f.startAgent(hi)
	wait.For(t, 30*time.Second, "the restarted agent answers on its socket", func() (bool, string) {
		st, err := f.agentStatus(hi)
		if err != nil {
			return false, err.Error()
		}
		if st.Synced {
			return false, "agent says synced while every server is down"
		}
		return true, ""
	})
	holdFor(t, 5*time.Second, "qemu processes unchanged while the servers are down", unchanged)

	// 3. Servers back: the agent syncs, nothing moves.
	for i := range f.ss.procs {
		f.ss.start(i)
	}
	f.waitLeader(t, 60*time.Second)
	took = f.waitAgentSynced(t, hi)
	t.Logf("servers restarted: agent on %s synced after %s", f.lab.Hosts[hi].Name, took.Round(time.Millisecond))
	f.waitNodesNormal(t, 60*time.Second)
	wait.For(t, 60*time.Second, "every host runs what is placed on it", func() (bool, string) {
		seen := f.converged(foreign)
		return seen == "", seen
	})
	holdFor(t, 3*time.Second, "qemu processes unchanged after the servers returned", unchanged)
	for id := range foreign {
		for _, h := range f.lab.Hosts {
			if procs, _ := h.QemuProcesses(ctx); procs[id] != 0 {
				if st, err := domState(ctx, h, id); err != nil || st != "running" {
					t.Errorf("hand-made domain %s on %s: %q %v", id, h.Name, st, err)
				}
			}
		}
	}
}

// testLibvirtdRestart: libvirtd stops and starts under a running agent; the
// agent reconnects and keeps reconciling (a killed qemu is restarted, a new
// VM starts).
func testLibvirtdRestart(t *testing.T, f *fleet) {
	var vm structs.VM
	if err := f.chimeJSON(&vm, "vm", "show", "crash"); err != nil {
		t.Fatal(err)
	}
	hi, _, _ := f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
	h := f.lab.Hosts[hi]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := h.StopLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "agent on "+h.Name+" notices libvirtd is gone", func() (bool, string) {
		st, err := f.agentStatus(hi)
		if err != nil {
			return false, err.Error()
		}
		if st.LibvirtConnected {
			return false, "libvirt_connected: true"
		}
		return true, ""
	})
	if err := h.StartLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	took := wait.For(t, 60*time.Second, "agent on "+h.Name+" reconnected to libvirtd", func() (bool, string) {
		st, err := f.agentStatus(hi)
		if err != nil {
			return false, err.Error()
		}
		if !st.LibvirtConnected {
			return false, "libvirt_connected: false"
		}
		return true, ""
	})
	t.Logf("libvirtd on %s restarted: agent reconnected after %s", h.Name, took.Round(time.Millisecond))

	procs, err := h.QemuProcesses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := procs[vm.ID]
	if pid == 0 {
		t.Fatalf("crash's qemu is gone from %s after the libvirtd restart", h.Name)
	}
	took = f.killQemuAndWaitRestart(t, hi, vm.ID, pid)
	t.Logf("after the libvirtd restart: kill -9 of qemu on %s → running again after %s", h.Name, took.Round(time.Millisecond))

	fresh := f.createVM(t, "after-libvirtd")
	_, _, took = f.waitRunningOnOneHost(t, fresh.ID, 60*time.Second)
	t.Logf("after the libvirtd restart: a new VM runs %s after create (%s since libvirtd came back)",
		took.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
}

// testTwentyVMs: 20 VMs over three hosts; every host runs exactly the VMs
// placed on it, per its own libvirtd, and none runs twice.
func testTwentyVMs(t *testing.T, f *fleet, foreign map[string]bool) {
	start := time.Now()
	for i := 1; i <= 20; i++ {
		f.mustChime(t, "vm", "create", fmt.Sprintf("many-%02d", i), "--vcpus", "1", "--memory", "64")
	}
	created := time.Since(start)
	took := wait.For(t, 5*time.Minute, "every host runs exactly what is placed on it", func() (bool, string) {
		_, vms, err := f.placement()
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, vm := range vms {
			if strings.HasPrefix(vm.Name, "many-") && vm.NodeID != "" {
				n++
			}
		}
		if n != 20 {
			return false, fmt.Sprintf("%d of 20 VMs placed", n)
		}
		seen := f.converged(foreign)
		return seen == "", seen
	})
	ctx := context.Background()
	snap, err := f.qemuSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	per := make(map[string]int)
	for _, where := range snap {
		per[strings.SplitN(where, "/", 2)[0]]++
	}
	t.Logf("20 VMs: created in %s, all running where placed %s later; qemu processes per host (hand-made included): %v",
		created.Round(time.Millisecond), took.Round(time.Millisecond), per)
	want, _, err := f.placement()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range f.lab.Hosts {
		if len(want[h.Name]) == 0 {
			t.Errorf("spread placement left %s empty: %v", h.Name, per)
		}
	}
	wait.For(t, 60*time.Second, "chime vm list shows every VM running", func() (bool, string) {
		vms, err := f.vmList()
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, vm := range vms {
			if vm.DesiredState == structs.DesiredRunning && vm.State != structs.StateRunning {
				bad = append(bad, vm.Name+":"+vm.State)
			}
		}
		return len(bad) == 0, strings.Join(bad, " ")
	})
}

// expectPlacedOn fails unless the servers place VM name on host.
func (f *fleet) expectPlacedOn(t *testing.T, name, host string) {
	t.Helper()
	var vm structs.VM
	if err := f.chimeJSON(&vm, "vm", "show", name); err != nil {
		t.Fatal(err)
	}
	if got := f.nodes[vm.NodeID]; got != host {
		t.Fatalf("VM %s runs on %s but is placed on node %s (%q)", name, host, vm.NodeID, got)
	}
}

// expectDomState returns "" when host h's libvirt reports state for uuid
// (and, unless qemuOK, no qemu process of it runs there).
func (f *fleet) expectDomState(h *lab.Host, uuid, state string, qemuOK bool) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := domState(ctx, h, uuid)
	if err != nil {
		return err.Error()
	}
	if st != state {
		return fmt.Sprintf("%s: %s", h.Name, st)
	}
	if !qemuOK {
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			return err.Error()
		}
		if pid := procs[uuid]; pid != 0 {
			return fmt.Sprintf("%s: libvirt says %s but qemu pid %d runs", h.Name, st, pid)
		}
	}
	return ""
}

// waitVMState waits until `chime vm show` reports state: the servers' view
// converges with libvirt's.
func (f *fleet) waitVMState(t *testing.T, name, state string) {
	t.Helper()
	wait.For(t, 30*time.Second, "chime vm show "+name+" says "+state, func() (bool, string) {
		var vm structs.VM
		if err := f.chimeJSON(&vm, "vm", "show", name); err != nil {
			return false, err.Error()
		}
		if vm.State != state {
			return false, "state " + vm.State
		}
		return true, ""
	})
}

// waitAgentSynced waits until host i's agent has synced with the servers
// and reconciled once since it started.
func (f *fleet) waitAgentSynced(t *testing.T, i int) time.Duration {
	t.Helper()
	return wait.For(t, 60*time.Second, "agent on "+f.lab.Hosts[i].Name+" synced", func() (bool, string) {
		st, err := f.agentStatus(i)
		if err != nil {
			return false, err.Error()
		}
		if !st.Synced || st.LastReconcile.IsZero() {
			return false, fmt.Sprintf("synced %v, last reconcile %v, error %q", st.Synced, st.LastReconcile, st.ReconcileError)
		}
		return true, ""
	})
}

// defineForeign defines and starts a diskless domain on h with virsh, as
// an operator would by hand: no chime metadata.
func (f *fleet) defineForeign(t *testing.T, h *lab.Host, name, id string) {
	t.Helper()
	xml := fmt.Sprintf(`<domain type='%s'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices><serial type='pty'/><console type='pty'/></devices>
</domain>
`, lab.DomainType(), name, id)
	path := filepath.Join(f.root, name+".xml")
	if err := os.WriteFile(path, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{{"define", path}, {"start", name}} {
		if out, err := h.Virsh(ctx, args...); err != nil {
			t.Fatalf("virsh %v on %s: %v %s", args, h.Name, err, out)
		}
	}
}

// diffSnapshots describes how two qemuSnapshot results differ, or "".
func diffSnapshots(before, now map[string]string) string {
	var d []string
	for id, w := range before {
		if now[id] != w {
			d = append(d, fmt.Sprintf("%s: %s → %q", id, w, now[id]))
		}
	}
	for id, w := range now {
		if _, ok := before[id]; !ok {
			d = append(d, fmt.Sprintf("%s: new on %s", id, w))
		}
	}
	sort.Strings(d)
	return strings.Join(d, "; ")
}
