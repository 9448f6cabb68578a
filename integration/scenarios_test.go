package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// scenarioVMs is how many VMs the failure scenarios keep running: two per
// host at the start, so that every victim host has VMs to lose or move.
const scenarioVMs = 6

// scenarioDiskMiB is the virtual size of each scenario VM's qcow2 disk, on a
// LUN of the lab's SAN (lab.CreateQcow2LUN): a block disk, which libvirt
// live-migrates (scenarios 3-5) and virtlockd leases.
const scenarioDiskMiB = 16

// TestScenarios is issue 5's six failure scenarios on one fleet (3 servers,
// 3 hosts with management and business networks). Each subtest injects a
// fault on one host (the one running most VMs), recovers with the
// operations an SRE would use (docs/runbooks/), checks the result with
// libvirt on every host, restores the fleet (every node enabled and
// normal, libvirt running exactly what the servers place) and prints its
// recovery time. A uniqueness checker watches the whole run; a webhook
// receiver takes the alarms.
func TestScenarios(t *testing.T) {
	hook := newWebhookReceiver(t)
	storageRoot := filepath.Join(fleetRoot(), "storage")
	f := newFleetWith(t, fleetOptions{
		ServerArgs: []string{"--alarm-webhook", hook.URL()},
		AgentArgs: func(i int, h *lab.Host) []string {
			dir := filepath.Join(storageRoot, h.Name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			return []string{
				"--storage-path", dir,
				// The root namespace's address on the business bridge: a
				// refused connection proves the network works.
				"--business-probe", bizGateway(t, h) + ":9",
				"--business-probe-interval", "2s",
			}
		},
	})
	s := &scenarios{f: f, hook: hook, storage: storageRoot, recovery: map[string]time.Duration{}}
	u := startUniquenessChecker(t, f.lab.Hosts)
	for i := 0; i < scenarioVMs; i++ {
		name := fmt.Sprintf("svc-%d", i)
		disk, err := f.lab.CreateQcow2LUN(t.Context(), name, scenarioDiskMiB)
		if err != nil {
			t.Fatal(err)
		}
		vm := f.createVM(t, name, "--disk", disk)
		s.vms = append(s.vms, vm)
	}
	wait.For(t, 3*time.Minute, "every VM running where placed", func() (bool, string) {
		seen := s.settled()
		return seen == "", seen
	})
	t.Logf("fleet: %s", s.layout())
	s.checkDisks(t)

	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"1a-NodeDownAndBack", s.nodeDownAndBack},
		{"1b-NodeDownDrainRebuild", s.nodeDownRebuild},
		{"2-AgentCrash", s.agentCrash},
		{"3-DiskFaultEvacuate", s.diskFault},
		{"4-ManagementDown", s.managementDown},
		{"5-BusinessDown", s.businessDown},
		{"6-IsolatedNode", s.isolated},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.fn) {
			break // the next scenario needs the fleet this one restores
		}
	}
	u.check(t)
	// No VM ran twice (the checker above): a UniquenessConflict alarm
	// would be a false one (scenario 4 raised two before heartbeats were
	// bounded: one built before the node-local migration arrived after it).
	for _, h := range s.f.lab.Hosts {
		if n := hook.count("UniquenessConflict", h.Name, "firing"); n > 0 {
			t.Errorf("%d UniquenessConflict alarms for %s while no VM ran twice: %s", n, h.Name, hook)
		}
	}
	var names []string
	for n := range s.recovery {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t.Logf("recovery time %-26s %s", n, s.recovery[n].Round(100*time.Millisecond))
	}
	t.Logf("alarms received: %s", hook)
}

// scenarios is the state the failure scenarios share.
type scenarios struct {
	f        *fleet
	hook     *webhookReceiver
	storage  string                   // parent of every host's --storage-path directory
	vms      []structs.VM             // the VMs kept running through the scenarios
	recovery map[string]time.Duration // scenario → fault to VMs running again
}

// bizGateway is the root namespace's address on h's business network
// (the .1 of its /24, which the lab gives the business bridge).
func bizGateway(t *testing.T, h *lab.Host) string {
	a, err := netip.ParseAddr(h.BizIP)
	if err != nil {
		t.Fatal(err)
	}
	b := a.As4()
	b[3] = 1
	return netip.AddrFrom4(b).String()
}

func (s *scenarios) ids() map[string]bool {
	m := map[string]bool{}
	for _, vm := range s.vms {
		m[vm.ID] = true
	}
	return m
}

// checkDisks checks, with libvirt on the host running each VM, that its
// disk is the block device of its LUN opened as qcow2 (the capacity qemu
// reports is the image's virtual size, half the LUN) and that virtlockd
// holds a lease for it.
func (s *scenarios) checkDisks(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for i, h := range s.f.lab.Hosts {
		ids, err := s.runningOn(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			xml, err := h.Virsh(ctx, "dumpxml", id)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(xml, "<disk type='block' device='disk'>") || !strings.Contains(xml, "type='qcow2'") || !strings.Contains(xml, "cache='none'") {
				t.Errorf("vm %s on %s: want a qcow2 block disk with cache none, domain XML:\n%s", id, h.Name, xml)
			}
			info, err := h.Virsh(ctx, "domblkinfo", id, "vda")
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("Capacity: %d ", scenarioDiskMiB<<20)
			if !strings.Contains(strings.Join(strings.Fields(info), " ")+" ", want) {
				t.Errorf("vm %s on %s: domblkinfo vda:\n%s\nwant %q (qcow2's virtual size, not the LUN's)", id, h.Name, info, want)
			}
			t.Logf("vm %s on %s: vda qcow2 on a LUN, %s", id, h.Name, strings.Join(strings.Fields(info), " "))
		}
	}
	leases, err := os.ReadDir(s.f.lab.LockspaceDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lockspace %s: %d lease files", s.f.lab.LockspaceDir(), len(leases))
	if len(leases) < scenarioVMs {
		t.Errorf("lockspace holds %d lease files, want at least %d (one per running disk)", len(leases), scenarioVMs)
	}
}

// runningOn lists the scenario VMs libvirt runs on host i.
func (s *scenarios) runningOn(ctx context.Context, i int) ([]string, error) {
	running, err := libvirtUUIDs(ctx, s.f.lab.Hosts[i], false)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, vm := range s.vms {
		if running[vm.ID] {
			out = append(out, vm.ID)
		}
	}
	return out, nil
}

// victim is the host running most scenario VMs, and those VMs.
func (s *scenarios) victim(t *testing.T) (int, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	best, bestVMs := -1, []string(nil)
	for i := range s.f.lab.Hosts {
		on, err := s.runningOn(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if best < 0 || len(on) > len(bestVMs) {
			best, bestVMs = i, on
		}
	}
	if len(bestVMs) == 0 {
		t.Fatalf("no host runs a scenario VM: %s", s.layout())
	}
	t.Logf("victim %s runs %d VMs (%s)", s.f.lab.Hosts[best].Name, len(bestVMs), s.layout())
	return best, bestVMs
}

// layout is "hv1: 2, hv2: 2, hv3: 2" from libvirt.
func (s *scenarios) layout() string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var parts []string
	for i, h := range s.f.lab.Hosts {
		on, err := s.runningOn(ctx, i)
		if err != nil {
			parts = append(parts, h.Name+": "+err.Error())
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %d", h.Name, len(on)))
	}
	return strings.Join(parts, ", ")
}

// settled reports "" when the fleet is back to normal: every node enabled
// and normal, every scenario VM running on exactly one host, libvirt on
// every host running exactly what the servers place there, and chime vm
// list saying running for each. Otherwise it says what differs.
func (s *scenarios) settled() string {
	nodes, err := s.f.nodeList()
	if err != nil {
		return err.Error()
	}
	for _, n := range nodes {
		if n.ManagementState != structs.NodeEnabled || n.MonitorState != structs.MonitorNormal {
			return fmt.Sprintf("node %s is %s/%s %v", n.Name, n.ManagementState, n.MonitorState, n.Faults)
		}
	}
	if msg := s.f.converged(nil); msg != "" {
		return msg
	}
	vms, err := s.f.vmList()
	if err != nil {
		return err.Error()
	}
	for _, vm := range vms {
		if s.ids()[vm.ID] && (vm.State != structs.StateRunning || vm.NodeID == "") {
			return fmt.Sprintf("chime vm list: %s is %s on %q", vm.Name, vm.State, vm.NodeID)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, vm := range s.vms {
		hosts, err := s.f.where(ctx, vm.ID)
		if err != nil {
			return err.Error()
		}
		if len(hosts) != 1 {
			return fmt.Sprintf("%s runs on %v", vm.Name, hosts)
		}
	}
	return ""
}

// restore waits until the fleet is settled again.
func (s *scenarios) restore(t *testing.T) {
	t.Helper()
	took := wait.For(t, 3*time.Minute, "fleet settled (all nodes enabled+normal, libvirt = placement)", func() (bool, string) {
		seen := s.settled()
		return seen == "", seen
	})
	t.Logf("fleet settled %s later: %s", took.Round(100*time.Millisecond), s.layout())
}

// nodeState waits until host i's node satisfies ok, and returns it.
func (s *scenarios) waitNode(t *testing.T, i int, timeout time.Duration, what string, ok func(n structs.Node) bool) structs.Node {
	t.Helper()
	name := s.f.lab.Hosts[i].Name
	var got structs.Node
	wait.For(t, timeout, "node "+name+" "+what, func() (bool, string) {
		var n structs.Node
		if err := s.f.chimeJSON(&n, "node", "show", name); err != nil {
			return false, err.Error()
		}
		got = n
		if !ok(n) {
			return false, fmt.Sprintf("%s/%s faults %v local_drained %v drain_acked %v fenced %v",
				n.ManagementState, n.MonitorState, n.Faults, n.LocalDrained, n.DrainAcked, n.Fenced)
		}
		return true, ""
	})
	return got
}

// waitAlarm waits for a webhook delivery of alertname for host i's node.
func (s *scenarios) waitAlarm(t *testing.T, name string, i int, status string, since time.Time) time.Duration {
	t.Helper()
	node := s.f.lab.Hosts[i].Name
	var at time.Time
	wait.For(t, 60*time.Second, fmt.Sprintf("alarm %s %s for %s", name, status, node), func() (bool, string) {
		a, ok := s.hook.find(name, node, status, since)
		if !ok {
			return false, s.hook.String()
		}
		at = a.At
		return true, ""
	})
	return at.Sub(since)
}

// logNodeList prints `chime node list` as the operator sees it.
func (s *scenarios) logNodeList(t *testing.T, when string) {
	t.Helper()
	out, err := s.f.chime("node", "list")
	if err != nil {
		t.Logf("chime node list (%s): %v", when, err)
		return
	}
	t.Logf("chime node list (%s):\n%s", when, out)
}

// onHost runs `chime ARGS` inside host i's network namespace, against its
// agent's socket, as an operator on the hypervisor would.
func (s *scenarios) onHost(t *testing.T, i int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args = append(args, "--socket", filepath.Join(s.f.agentDir(i), "agent.sock"))
	out, err := s.f.lab.Hosts[i].Command(ctx, chimeBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("on %s: chime %s: %v\n%s", s.f.lab.Hosts[i].Name, strings.Join(args, " "), err, out)
	}
	t.Logf("on %s: chime %s:\n%s", s.f.lab.Hosts[i].Name, strings.Join(args, " "), out)
	return string(out)
}

// nodeDown kills everything on host i (libvirtd, virtlogd, qemu, agent)
// and cuts both its links: a power loss.
func (s *scenarios) nodeDown(t *testing.T, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := s.f.lab.Hosts[i]
	if err := h.KillAll(ctx); err != nil {
		t.Fatal(err)
	}
	s.f.agents[i].kill() // already dead: reap it
	for _, n := range []string{lab.NetMgmt, lab.NetBiz} {
		if err := h.SetLink(ctx, n, false); err != nil {
			t.Fatal(err)
		}
	}
}

// nodeBack powers host i on again: links up, libvirtd, then the agent.
func (s *scenarios) nodeBack(t *testing.T, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := s.f.lab.Hosts[i]
	s.setLinks(t, i, true)
	if err := h.StartLibvirtd(ctx); err != nil {
		t.Fatal(err)
	}
	s.f.startAgent(i)
}

func (s *scenarios) setLinks(t *testing.T, i int, up bool, nets ...string) {
	t.Helper()
	if len(nets) == 0 {
		nets = []string{lab.NetMgmt, lab.NetBiz}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nets {
		if err := s.f.lab.Hosts[i].SetLink(ctx, n, up); err != nil {
			t.Fatal(err)
		}
	}
}

// waitOneHost is fleet.waitRunningOnOneHost for a fleet with a dead host:
// a host whose libvirtd is not running counts as running no VM, provided
// no qemu process of the VM is left in its namespace. It returns the host
// index and the qemu pid.
func (s *scenarios) waitOneHost(t *testing.T, id string, timeout time.Duration) (int, int, time.Duration) {
	t.Helper()
	host, pid := -1, 0
	took := wait.For(t, timeout, "VM "+id+" running on exactly one host", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var on []int
		for i, h := range s.f.lab.Hosts {
			procs, err := h.QemuProcesses(ctx)
			if err != nil {
				return false, err.Error()
			}
			if !h.LibvirtdRunning() {
				if procs[id] != 0 {
					return false, fmt.Sprintf("qemu pid %d of %s on %s, whose libvirtd is down", procs[id], id, h.Name)
				}
				continue
			}
			running, err := libvirtUUIDs(ctx, h, false)
			if err != nil {
				return false, err.Error()
			}
			if running[id] {
				if procs[id] == 0 {
					return false, fmt.Sprintf("libvirt on %s says running but no qemu process has -uuid %s", h.Name, id)
				}
				on = append(on, i)
				host, pid = i, procs[id]
			}
		}
		if len(on) != 1 {
			return false, fmt.Sprintf("libvirt runs it on hosts %v", on)
		}
		return true, ""
	})
	return host, pid, took
}

// waitRunningElsewhere waits until every VM of ids runs on exactly one host
// other than i, and returns when the last one did.
func (s *scenarios) waitRunningElsewhere(t *testing.T, ids []string, i int, timeout time.Duration) {
	t.Helper()
	for _, id := range ids {
		h, _, _ := s.waitOneHost(t, id, timeout)
		if h == i {
			t.Fatalf("VM %s runs on %s, the host it had to leave", id, s.f.lab.Hosts[i].Name)
		}
	}
}

// holdNothingOn checks for d that host i runs no qemu process at all.
func (s *scenarios) holdNothingOn(t *testing.T, i int, d time.Duration) {
	t.Helper()
	h := s.f.lab.Hosts[i]
	holdFor(t, d, "nothing (re)started on "+h.Name, func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			return ""
		}
		if len(procs) > 0 {
			return fmt.Sprintf("qemu processes on %s: %v", h.Name, procs)
		}
		return ""
	})
}

// expectAbsent fails unless host i's libvirt knows none of ids (running or
// defined): stale copies removed.
func (s *scenarios) expectAbsent(t *testing.T, i int, ids []string) {
	t.Helper()
	h := s.f.lab.Hosts[i]
	wait.For(t, 60*time.Second, "stale copies gone from "+h.Name, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		all, err := libvirtUUIDs(ctx, h, true)
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, id := range ids {
			if all[id] {
				st, _ := h.Virsh(ctx, "domstate", "--reason", id)
				left = append(left, id+" ("+strings.TrimSpace(st)+")")
			}
		}
		if len(left) > 0 {
			return false, "still defined: " + strings.Join(left, ", ")
		}
		return true, ""
	})
}

// expectLiveMoved checks every VM of before (uuid → "host/pid") runs on
// another host, with libvirt saying "running (migrated)": live, no reboot.
func (s *scenarios) expectLiveMoved(t *testing.T, before map[string]string, from int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for id, was := range before {
		hi, pid, _ := s.waitOneHost(t, id, 2*time.Minute)
		if hi == from {
			t.Fatalf("VM %s still runs on %s", id, s.f.lab.Hosts[from].Name)
		}
		reason, err := s.f.lab.Hosts[hi].Virsh(ctx, "domstate", "--reason", id)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(reason, "migrated") {
			t.Fatalf("VM %s on %s: libvirt says %q, want running (migrated): it was restarted, not live-migrated",
				id, s.f.lab.Hosts[hi].Name, strings.TrimSpace(reason))
		}
		t.Logf("VM %s: %s → %s/%d (%s)", id[:8], was, s.f.lab.Hosts[hi].Name, pid, strings.TrimSpace(reason))
	}
}

func (s *scenarios) snapshotOf(t *testing.T, ids []string) map[string]string {
	t.Helper()
	snap, err := s.f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, id := range ids {
		out[id] = snap[id]
	}
	return out
}

func (s *scenarios) record(t *testing.T, name string, d time.Duration, what string) {
	t.Helper()
	s.recovery[name] = d
	t.Logf("RECOVERY %s: %s (%s)", name, d.Round(100*time.Millisecond), what)
}

// --- the scenarios ---

// nodeDownAndBack: scenario 1a. Power loss → unreachable + alarm; power
// back → the agent starts the VMs placed there again.
func (s *scenarios) nodeDownAndBack(t *testing.T) {
	i, ids := s.victim(t)
	name := s.f.lab.Hosts[i].Name
	t0 := time.Now()
	s.nodeDown(t, i)
	s.waitNode(t, i, 2*time.Minute, "unreachable", func(n structs.Node) bool { return n.MonitorState == structs.MonitorUnreachable })
	t.Logf("%s unreachable %s after the power loss", name, time.Since(t0).Round(100*time.Millisecond))
	t.Logf("alarm NodeUnreachable after %s", s.waitAlarm(t, "NodeUnreachable", i, "firing", t0).Round(100*time.Millisecond))
	s.logNodeList(t, "node down")

	s.nodeBack(t, i)
	for _, id := range ids {
		hi, _, _ := s.waitOneHost(t, id, 3*time.Minute)
		if hi != i {
			t.Fatalf("VM %s came back on %s, want %s (it is placed there)", id, s.f.lab.Hosts[hi].Name, name)
		}
	}
	s.record(t, "1a node down, back", time.Since(t0), "power loss → the returning agent started its VMs")
	s.waitNode(t, i, time.Minute, "normal", func(n structs.Node) bool { return n.MonitorState == structs.MonitorNormal })
	s.waitAlarm(t, "NodeUnreachable", i, "resolved", t0)
	s.restore(t)
}

// nodeDownRebuild: scenario 1b. Power loss → drain + rebuild
// --confirm-fenced → VMs run elsewhere; node back → stale copies removed,
// nothing restarted there.
func (s *scenarios) nodeDownRebuild(t *testing.T) {
	i, ids := s.victim(t)
	name := s.f.lab.Hosts[i].Name
	t0 := time.Now()
	s.nodeDown(t, i)
	s.waitNode(t, i, 2*time.Minute, "unreachable", func(n structs.Node) bool { return n.MonitorState == structs.MonitorUnreachable })
	s.waitAlarm(t, "NodeUnreachable", i, "firing", t0)

	s.f.mustChime(t, "node", "drain", name)
	if out, err := s.f.chime("node", "rebuild", name); err == nil {
		t.Fatalf("rebuild of an unacknowledged drain accepted without --confirm-fenced: %s", out)
	} else {
		t.Logf("rebuild without --confirm-fenced refused, as it must be: %v", err)
	}
	s.f.mustChime(t, "node", "rebuild", name, "--confirm-fenced")
	s.waitRunningElsewhere(t, ids, i, 3*time.Minute)
	s.record(t, "1b node down, rebuild", time.Since(t0), "power loss → drain + rebuild → VMs running on other hosts")

	// The node returns: its agent removes the stale copies before it says
	// it is back, and starts nothing.
	s.nodeBack(t, i)
	s.waitNode(t, i, 2*time.Minute, "normal again (drained)", func(n structs.Node) bool {
		return n.MonitorState == structs.MonitorNormal && n.ManagementState == structs.NodeDrained
	})
	s.expectAbsent(t, i, ids)
	s.holdNothingOn(t, i, 5*time.Second)
	s.logNodeList(t, "node back, drained")
	s.f.mustChime(t, "node", "enable", name)
	s.holdNothingOn(t, i, 3*time.Second)
	s.restore(t)
}

// agentCrash: scenario 2. kill -9 of the agent, restarted as systemd
// would: no qemu process changes.
func (s *scenarios) agentCrash(t *testing.T) {
	i, _ := s.victim(t)
	before, err := s.f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.f.killAgent(i)
	s.f.startAgent(i)
	s.f.waitAgentSynced(t, i)
	s.record(t, "2 agent crash", time.Since(t0), "kill -9 → restarted agent synced; VMs never stopped")
	holdFor(t, 5*time.Second, "qemu processes unchanged after the agent restart", func() string {
		now, err := s.f.qemuSnapshot(context.Background())
		if err != nil {
			return err.Error()
		}
		return diffSnapshots(before, now)
	})
	s.restore(t)
}

// diskFault: scenario 3. The storage path fails (the directory replaced
// by a regular file: every write below it fails, even as root) → error +
// alarm; evacuate → every VM live-migrated away.
func (s *scenarios) diskFault(t *testing.T) {
	i, ids := s.victim(t)
	name := s.f.lab.Hosts[i].Name
	dir := filepath.Join(s.storage, name)
	aside := dir + ".ok"
	before := s.snapshotOf(t, ids)
	t0 := time.Now()
	if err := os.Rename(dir, aside); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	restored := false
	restoreDir := func() {
		if !restored {
			restored = true
			os.Remove(dir)
			os.Rename(aside, dir)
		}
	}
	defer restoreDir()
	n := s.waitNode(t, i, time.Minute, "error (storage fault)", func(n structs.Node) bool { return n.MonitorState == structs.MonitorError })
	t.Logf("%s error %s after the fault: %v", name, time.Since(t0).Round(100*time.Millisecond), n.Faults)
	t.Logf("alarm NodeError after %s", s.waitAlarm(t, "NodeError", i, "firing", t0).Round(100*time.Millisecond))
	s.logNodeList(t, "storage fault")

	var task structs.Task
	if err := s.f.chimeJSON(&task, "node", "evacuate", name); err != nil {
		t.Fatal(err)
	}
	s.f.waitTask(t, task.ID, structs.TaskSucceeded, 5*time.Minute)
	s.expectLiveMoved(t, before, i)
	s.record(t, "3 disk fault, evacuate", time.Since(t0), "fault → every VM live-migrated away (never stopped)")

	restoreDir()
	s.waitNode(t, i, time.Minute, "normal after the repair", func(n structs.Node) bool { return n.MonitorState == structs.MonitorNormal })
	s.waitAlarm(t, "NodeError", i, "resolved", t0)
	s.f.mustChime(t, "node", "enable", name)
	s.restore(t)
}

// managementDown: scenario 4. Management link cut, business up →
// unreachable, VMs keep running; `chime agent migrate` on the node moves
// them over the business network; the servers follow the destination's
// report; the source converges when its link returns.
func (s *scenarios) managementDown(t *testing.T) {
	i, ids := s.victim(t)
	h := s.f.lab.Hosts[i]
	d := (i + 1) % len(s.f.lab.Hosts)
	dest := s.f.lab.Hosts[d]
	before := s.snapshotOf(t, ids)
	t0 := time.Now()
	s.setLinks(t, i, false, lab.NetMgmt)
	s.waitNode(t, i, 2*time.Minute, "unreachable", func(n structs.Node) bool { return n.MonitorState == structs.MonitorUnreachable })
	t.Logf("%s unreachable %s after the management link went down", h.Name, time.Since(t0).Round(100*time.Millisecond))
	s.waitAlarm(t, "NodeUnreachable", i, "firing", t0)
	s.logNodeList(t, "management down")
	// Cut off but alive: its VMs keep running, untouched.
	holdFor(t, 3*time.Second, "VMs keep running on "+h.Name+" while it is unreachable", func() string {
		now := s.snapshotOf(t, ids)
		return diffSnapshots(before, now)
	})

	s.onHost(t, i, "agent", "migrate", "--interface", h.BizIf, "--all", "--dest", dest.BizIP)
	s.expectLiveMoved(t, before, i)
	for _, id := range ids {
		if hi, _, _ := s.waitOneHost(t, id, time.Minute); hi != d {
			t.Fatalf("VM %s runs on %s, migrated to %s", id, s.f.lab.Hosts[hi].Name, dest.Name)
		}
	}
	// The servers converge from the destination's report alone.
	took := wait.For(t, 2*time.Minute, "servers place the migrated VMs on "+dest.Name+", running", func() (bool, string) {
		vms, err := s.f.vmList()
		if err != nil {
			return false, err.Error()
		}
		want := map[string]bool{}
		for _, id := range ids {
			want[id] = true
		}
		for _, vm := range vms {
			if want[vm.ID] && (s.f.nodes[vm.NodeID] != dest.Name || vm.State != structs.StateRunning) {
				return false, fmt.Sprintf("%s placed on %s, %s", vm.Name, s.f.nodes[vm.NodeID], vm.State)
			}
		}
		return true, ""
	})
	t.Logf("servers converged %s after the node-local migration", took.Round(100*time.Millisecond))
	s.record(t, "4 management down", time.Since(t0), "link cut → agent migrate over business → servers place VMs on the destination (VMs never stopped)")

	s.setLinks(t, i, true, lab.NetMgmt)
	s.waitNode(t, i, 2*time.Minute, "normal again", func(n structs.Node) bool { return n.MonitorState == structs.MonitorNormal })
	s.holdNothingOn(t, i, 5*time.Second)
	s.waitAlarm(t, "NodeUnreachable", i, "resolved", t0)
	s.restore(t)
}

// businessDown: scenario 5. Business link cut, management up → error
// within 30 s + probe interval; evacuate over management.
func (s *scenarios) businessDown(t *testing.T) {
	i, ids := s.victim(t)
	name := s.f.lab.Hosts[i].Name
	before := s.snapshotOf(t, ids)
	t0 := time.Now()
	s.setLinks(t, i, false, lab.NetBiz)
	n := s.waitNode(t, i, 32*time.Second, "error (business network)", func(n structs.Node) bool {
		if n.MonitorState != structs.MonitorError {
			return false
		}
		for _, f := range n.Faults {
			if strings.Contains(f, "business") {
				return true
			}
		}
		return false
	})
	t.Logf("%s error %s after the business link went down: %v", name, time.Since(t0).Round(100*time.Millisecond), n.Faults)
	s.waitAlarm(t, "NodeError", i, "firing", t0)
	s.logNodeList(t, "business down")

	var task structs.Task
	if err := s.f.chimeJSON(&task, "node", "evacuate", name); err != nil {
		t.Fatal(err)
	}
	s.f.waitTask(t, task.ID, structs.TaskSucceeded, 5*time.Minute)
	s.expectLiveMoved(t, before, i)
	s.record(t, "5 business down, evacuate", time.Since(t0), "link cut → evacuated over management (VMs never stopped)")

	s.setLinks(t, i, true, lab.NetBiz)
	s.waitNode(t, i, time.Minute, "normal after the repair", func(n structs.Node) bool { return n.MonitorState == structs.MonitorNormal })
	s.waitAlarm(t, "NodeError", i, "resolved", t0)
	s.f.mustChime(t, "node", "enable", name)
	s.restore(t)
}

// isolated: scenario 6. Both links cut → local drain on the node, drain +
// rebuild --confirm-fenced on the servers → VMs run elsewhere exactly
// once; links back → consistent states, nothing runs on the drained
// node; node enable releases the local drain.
func (s *scenarios) isolated(t *testing.T) {
	i, ids := s.victim(t)
	h := s.f.lab.Hosts[i]
	t0 := time.Now()
	s.setLinks(t, i, false)
	s.waitNode(t, i, 2*time.Minute, "unreachable", func(n structs.Node) bool { return n.MonitorState == structs.MonitorUnreachable })
	s.waitAlarm(t, "NodeUnreachable", i, "firing", t0)
	s.logNodeList(t, "isolated")

	// On the node's console: stop everything and keep it stopped.
	s.onHost(t, i, "agent", "drain")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if on, err := s.runningOn(ctx, i); err != nil || len(on) > 0 {
		t.Fatalf("after chime agent drain, %s still runs %v (%v)", h.Name, on, err)
	}
	s.onHost(t, i, "agent", "status")
	if st, err := s.f.agentStatus(i); err != nil || !st.LocalDrained {
		t.Fatalf("after chime agent drain, the agent's status says local_drained %v (%v)", st.LocalDrained, err)
	}

	s.f.mustChime(t, "node", "drain", h.Name)
	if _, err := s.f.chime("node", "rebuild", h.Name); err == nil {
		t.Fatal("rebuild accepted without --confirm-fenced while the node cannot acknowledge")
	}
	s.f.mustChime(t, "node", "rebuild", h.Name, "--confirm-fenced")
	s.waitRunningElsewhere(t, ids, i, 3*time.Minute)
	s.record(t, "6 isolated node", time.Since(t0), "links cut → agent drain + node drain + rebuild → VMs running on other hosts")

	s.setLinks(t, i, true)
	n := s.waitNode(t, i, 2*time.Minute, "back, drained, local drain reported", func(n structs.Node) bool {
		return n.MonitorState == structs.MonitorNormal && n.ManagementState == structs.NodeDrained && n.LocalDrained
	})
	t.Logf("%s back: local_drained %v drain_acked %v fenced %v", h.Name, n.LocalDrained, n.DrainAcked, n.Fenced)
	s.expectAbsent(t, i, ids)
	s.holdNothingOn(t, i, 5*time.Second)
	wait.For(t, time.Minute, "chime vm list matches libvirt everywhere", func() (bool, string) {
		seen := s.f.converged(nil)
		return seen == "", seen
	})

	s.f.mustChime(t, "node", "enable", h.Name)
	wait.For(t, time.Minute, "the local drain released on "+h.Name, func() (bool, string) {
		st, err := s.f.agentStatus(i)
		if err != nil {
			return false, err.Error()
		}
		if st.LocalDrained {
			return false, "agent status: locally drained"
		}
		return true, ""
	})
	s.restore(t)
}
