package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// fleetPrefix names the fleet's lab (netns chimei-hvN, bridges chimeim0 and
// chimeib0), so that a person's lab ("chime") and the lab package's own
// tests ("chimet", "chimec") are never touched.
// CHIME_FLEET_PREFIX overrides it (at most 6 lowercase letters), so that
// two test processes on one machine use separate labs.
var fleetPrefix = func() string {
	if p := os.Getenv("CHIME_FLEET_PREFIX"); p != "" {
		return p
	}
	return "chimei"
}()

// fleet is a whole chime cluster on one machine: a lab of three hypervisor
// hosts (netns + libvirtd each), three `chime server` processes bound to the
// lab's server addresses on the management bridge, and one `chime agent`
// per host running inside the host's network namespace. Everything lives
// under root, a fixed directory, so a crashed run's processes can be found
// and killed by the next one.
type fleet struct {
	opts   fleetOptions
	t      *testing.T
	root   string // data dirs, logs and the lab's per-host dirs
	logs   string
	lab    *lab.Lab
	ss     *serverSet
	agents []*proc // by host index; replaced on restart
	nodes  map[string]string
	tls    *clusterTLS // the fleet's CA and certificates: every process and the CLI use them
	// joinToken is the agent-join token the agents register with
	// (bootstrapACL).
	joinToken string
	// agentTLS replaces the fleet's agent certificate for host i's agent
	// (a test that gives a host another identity).
	agentTLS map[int]tlsconf.Files
}

// fleetRoot is where a fleet keeps everything. It is fixed (not t.TempDir)
// so that a later run can recognise and kill a crashed run's processes by
// their command line, and short enough for unix socket paths (108 bytes).
func fleetRoot() string { return filepath.Join(os.TempDir(), "chime-fleet-"+fleetPrefix) }

// requireLab skips the test when the machine cannot run a lab (not root,
// libvirtd or qemu missing), and fails it in CI, where it must run.
func requireLab(t *testing.T) {
	t.Helper()
	if err := lab.Requirements(); err != nil {
		if inCI() {
			t.Fatalf("CI=true but the lab cannot run here: %v", err)
		}
		t.Skipf("needs root, libvirtd and qemu (skipped outside CI): %v", err)
	}
}

// newFleet builds the lab, starts the servers and the agents (on mutual
// TLS with a CA of the fleet's own, f.tls), and waits
// until the three nodes are registered and normal. t.Cleanup tears it all
// down; the root directory (data, logs) is kept when the test failed or
// CHIME_FLEET_KEEP is set.
func newFleet(t *testing.T) *fleet {
	t.Helper()
	return newFleetWith(t, fleetOptions{})
}

// fleetOptions adds flags to the fleet's processes.
type fleetOptions struct {
	ServerArgs []string                          // extra `chime server` flags (e.g. --alarm-webhook)
	AgentArgs  func(i int, h *lab.Host) []string // extra `chime agent` flags for host i
}

// newFleetWith is newFleet with extra flags for servers and agents.
func newFleetWith(t *testing.T, opts fleetOptions) *fleet {
	t.Helper()
	requireLab(t)
	root := fleetRoot()
	if n := killStaleChime(root); n > 0 {
		t.Logf("killed %d chime processes left over by an earlier run under %s", n, root)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	logs := filepath.Join(root, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CHIME_FLEET_KEEP") != "" {
			t.Logf("fleet kept for inspection: %s (logs in %s)", root, logs)
			return
		}
		os.RemoveAll(root)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	l, err := lab.Up(ctx, lab.Config{Prefix: fleetPrefix, Hosts: 3, Dir: filepath.Join(root, "lab"), Log: t.Logf})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	// Registered before the processes' cleanups, so it runs after them.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	f := &fleet{t: t, opts: opts, root: root, logs: logs, lab: l, agents: make([]*proc, len(l.Hosts))}
	// Mutual TLS everywhere, with a CA of the fleet's own (the default
	// outside --dev).
	f.tls = newClusterTLS(t)
	// Each host reports the machine's CPUs as its capacity (2 here): allow
	// enough vCPUs per host CPU for 20 one-vCPU VMs on three hosts.
	f.ss = newServerSetTLS(t, l.ServerIPs[:3], filepath.Join(root, "servers"), logs, f.tls,
		append([]string{"--heartbeat-interval", "1s", "--cpu-overcommit", "8",
			// Disks: the lab's shared images and its LUNs' device nodes.
			"--storage-root", l.ImagesDir(), "--storage-root", lab.SANDir}, opts.ServerArgs...)...)
	f.waitLeader(t, 60*time.Second)
	f.bootstrapACL(t)
	for i := range l.Hosts {
		f.startAgent(i)
	}
	f.waitNodesNormal(t, 60*time.Second)
	t.Logf("fleet up in %s: lab %s (%s), servers %v, domain type %s (lab.DomainType)",
		time.Since(start).Round(time.Millisecond), fleetPrefix, l.MgmtSubnet, f.ss.addrs(), lab.DomainType())
	return f
}

// agentDir is host i's agent data dir; its socket is agentDir/agent.sock.
func (f *fleet) agentDir(i int) string { return filepath.Join(f.root, "agents", f.lab.Hosts[i].Name) }

// startAgent starts host i's agent inside the host's network namespace,
// talking to the host's own libvirtd through its unix socket (unix sockets
// are not bound to a network namespace, so the URI is the same inside).
func (f *fleet) startAgent(i int) {
	h := f.lab.Hosts[i]
	args := []string{"--log-level", "debug", "agent",
		"--name", h.Name, "--data-dir", f.agentDir(i),
		"--libvirt-uri", h.LibvirtURI(),
		// Bound to every address of the host's namespace: the agent API
		// also takes node-local migrations over the business network.
		"--advertise", h.MgmtIP, "--bind", "0.0.0.0",
		"--business-interface", h.BizIf,
		// The test guests have no OS to honour an ACPI shutdown.
		"--shutdown-grace", "2s"}
	// With CHIME_LAB_DOMAIN_TYPE set, force the agents' domain type (TCG on
	// a KVM machine); otherwise they detect it, as on a real hypervisor.
	if os.Getenv(lab.DomainTypeEnv) != "" {
		args = append(args, "--domain-type", lab.DomainType())
	}
	for _, a := range f.ss.addrs() {
		args = append(args, "--server", a)
	}
	if f.opts.AgentArgs != nil {
		args = append(args, f.opts.AgentArgs(i, h)...)
	}
	if c, ok := f.agentTLS[i]; ok {
		args = append(append(args, tlsArgs(c)...), f.tls.gossipArgs()...)
	} else {
		args = append(args, f.tls.agentArgs()...)
	}
	if f.joinToken != "" {
		args = append(args, "--join-token", f.joinToken)
	}
	name := fmt.Sprintf("agent-%s-%d", h.Name, time.Now().UnixNano())
	f.agents[i] = startProc(f.t, name, f.logs, []string{"ip", "netns", "exec", h.Netns}, args...)
}

// killAgent sends SIGKILL to host i's agent, as a crash would.
func (f *fleet) killAgent(i int) { f.agents[i].kill() }

// waitLeader polls the servers until one says it is the leader.
func (f *fleet) waitLeader(t *testing.T, timeout time.Duration) {
	t.Helper()
	wait.For(t, timeout, "a leader", func() (bool, string) {
		for i, p := range f.ss.procs {
			if p == nil || !p.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := f.apiClient(i).Status(ctx)
			cancel()
			if err == nil && st.IsLeader {
				return true, ""
			}
		}
		return false, "no server reports itself leader"
	})
}

// waitNodesNormal waits until every host's node is registered, enabled and
// normal, and records node id → host name.
func (f *fleet) waitNodesNormal(t *testing.T, timeout time.Duration) {
	t.Helper()
	wait.For(t, timeout, "every host's node registered and normal", func() (bool, string) {
		nodes, err := f.nodeList()
		if err != nil {
			return false, err.Error()
		}
		byID := make(map[string]string)
		var seen []string
		for _, n := range nodes {
			seen = append(seen, n.Name+":"+n.MonitorState)
			if n.MonitorState == structs.MonitorNormal {
				byID[n.ID] = n.Name
			}
		}
		if len(byID) != len(f.lab.Hosts) {
			return false, fmt.Sprintf("nodes %v", seen)
		}
		f.nodes = byID
		return true, ""
	})
}

// chime runs the CLI against any running server (the first that answers).
func (f *fleet) chime(args ...string) (string, error) {
	var err error
	for i, p := range f.ss.procs {
		if p == nil || !p.running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var out string
		out, err = f.ss.cli(ctx, i, args...)
		cancel()
		if err == nil {
			return out, nil
		}
	}
	if err == nil {
		err = errors.New("no server running")
	}
	return "", err
}

// mustChime runs the CLI and fails the test on error.
func (f *fleet) mustChime(t *testing.T, args ...string) string {
	t.Helper()
	out, err := f.chime(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fleet) chimeJSON(v any, args ...string) error {
	out, err := f.chime(append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("decode %q: %w", out, err)
	}
	return nil
}

func (f *fleet) nodeList() ([]structs.Node, error) {
	var nodes []structs.Node
	return nodes, f.chimeJSON(&nodes, "node", "list")
}

func (f *fleet) vmList() ([]structs.VM, error) {
	var vms []structs.VM
	return vms, f.chimeJSON(&vms, "vm", "list")
}

// createVM creates a 64 MiB VM through the CLI (diskless unless extra
// has --disk) and returns it.
func (f *fleet) createVM(t *testing.T, name string, extra ...string) structs.VM {
	t.Helper()
	f.mustChime(t, append([]string{"vm", "create", name, "--vcpus", "1", "--memory", "64"}, extra...)...)
	var vm structs.VM
	if err := f.chimeJSON(&vm, "vm", "show", name); err != nil {
		t.Fatal(err)
	}
	return vm
}

// busiestHost creates n VMs named prefix-0 … prefix-(n-1), waits until
// each runs on exactly one host (within timeout each), and returns the
// host running most of them and every host's VMs (ids, in creation order).
func (f *fleet) busiestHost(t *testing.T, prefix string, n int, timeout time.Duration) (int, map[int][]string) {
	t.Helper()
	var vms []structs.VM
	for i := 0; i < n; i++ {
		vms = append(vms, f.createVM(t, fmt.Sprintf("%s-%d", prefix, i)))
	}
	on := map[int][]string{}
	for _, vm := range vms {
		h, _, _ := f.waitRunningOnOneHost(t, vm.ID, timeout)
		on[h] = append(on[h], vm.ID)
	}
	best := -1
	for h, ids := range on {
		if best < 0 || len(ids) > len(on[best]) {
			best = h
		}
	}
	return best, on
}

// agentStatus asks host i's agent over its local socket, like an operator
// on the hypervisor would.
func (f *fleet) agentStatus(i int) (local.Status, error) {
	var st local.Status
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := cli(ctx, "agent", "status", "-o", "json", "--socket", filepath.Join(f.agentDir(i), "agent.sock"))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("decode agent status %q: %w", out, err)
	}
	return st, nil
}

// hostIndex returns the index of the host named name, or -1.
func (f *fleet) hostIndex(name string) int {
	for i, h := range f.lab.Hosts {
		if h.Name == name {
			return i
		}
	}
	return -1
}

// libvirtUUIDs lists the domain UUIDs host h's libvirtd knows: running only,
// or all (defined too).
func libvirtUUIDs(ctx context.Context, h *lab.Host, all bool) (map[string]bool, error) {
	args := []string{"list", "--uuid"}
	if all {
		args = append(args, "--all")
	}
	out, err := h.Virsh(ctx, args...)
	if err != nil {
		return nil, fmt.Errorf("virsh list on %s: %w", h.Name, err)
	}
	set := make(map[string]bool)
	for _, line := range strings.Fields(out) {
		set[line] = true
	}
	return set, nil
}

// domState is libvirt's state of a domain on host h ("running", "shut
// off"), or "absent" when h's libvirtd does not know it.
func domState(ctx context.Context, h *lab.Host, uuid string) (string, error) {
	all, err := libvirtUUIDs(ctx, h, true)
	if err != nil {
		return "", err
	}
	if !all[uuid] {
		return "absent", nil
	}
	out, err := h.Virsh(ctx, "domstate", uuid)
	if err != nil {
		return "", fmt.Errorf("virsh domstate %s on %s: %w", uuid, h.Name, err)
	}
	return strings.TrimSpace(out), nil
}

// where reports, from libvirt on every host, the hosts on which uuid runs.
func (f *fleet) where(ctx context.Context, uuid string) ([]string, error) {
	var hosts []string
	for _, h := range f.lab.Hosts {
		running, err := libvirtUUIDs(ctx, h, false)
		if err != nil {
			return nil, err
		}
		if running[uuid] {
			hosts = append(hosts, h.Name)
		}
	}
	return hosts, nil
}

// waitRunningOnOneHost waits until uuid runs on exactly one host (libvirt
// and a qemu process) and returns that host's index and the qemu pid.
func (f *fleet) waitRunningOnOneHost(t *testing.T, uuid string, timeout time.Duration) (int, int, time.Duration) {
	t.Helper()
	host, pid := -1, 0
	took := wait.For(t, timeout, "VM "+uuid+" running on exactly one host", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hosts, err := f.where(ctx, uuid)
		if err != nil {
			return false, err.Error()
		}
		if len(hosts) != 1 {
			return false, fmt.Sprintf("libvirt runs it on %v", hosts)
		}
		i := f.hostIndex(hosts[0])
		procs, err := f.lab.Hosts[i].QemuProcesses(ctx)
		if err != nil {
			return false, err.Error()
		}
		if procs[uuid] == 0 {
			return false, fmt.Sprintf("libvirt on %s says running but no qemu process has -uuid %s", hosts[0], uuid)
		}
		host, pid = i, procs[uuid]
		return true, ""
	})
	return host, pid, took
}

// qemuSnapshot maps every VM uuid with a qemu process to "host/pid".
func (f *fleet) qemuSnapshot(ctx context.Context) (map[string]string, error) {
	snap := make(map[string]string)
	for _, h := range f.lab.Hosts {
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			return nil, err
		}
		for uuid, pid := range procs {
			if prev, ok := snap[uuid]; ok {
				return nil, fmt.Errorf("VM %s has qemu processes on two hosts: %s and %s/%d", uuid, prev, h.Name, pid)
			}
			snap[uuid] = h.Name + "/" + strconv.Itoa(pid)
		}
	}
	return snap, nil
}

// holdFor checks cond every 200 ms for d and fails at the first violation:
// for "nothing happens" assertions, which need a window of time.
func holdFor(t *testing.T, d time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if msg := cond(); msg != "" {
			t.Fatalf("%s: violated: %s", what, msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// killStaleChime kills chime processes whose command line names a path
// under root: the servers and agents of a crashed earlier run of this
// package's fleet. It returns how many it killed.
func killStaleChime(root string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if filepath.Base(args[0]) != "chime" {
			continue
		}
		for _, a := range args[1:] {
			if strings.HasPrefix(a, root+"/") {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					n++
				}
				break
			}
		}
	}
	return n
}

// vmsByHost groups placed VMs (desired running) by host name, through the
// servers' node_id placement.
func (f *fleet) placement() (map[string]map[string]bool, []structs.VM, error) {
	vms, err := f.vmList()
	if err != nil {
		return nil, nil, err
	}
	by := make(map[string]map[string]bool)
	for _, h := range f.lab.Hosts {
		by[h.Name] = make(map[string]bool)
	}
	for _, vm := range vms {
		if vm.DesiredState != structs.DesiredRunning || vm.NodeID == "" {
			continue
		}
		host, ok := f.nodes[vm.NodeID]
		if !ok {
			return nil, nil, fmt.Errorf("VM %s placed on unknown node %s", vm.Name, vm.NodeID)
		}
		by[host][vm.ID] = true
	}
	return by, vms, nil
}

// converged reports "" when every host's libvirt runs exactly the VMs the
// servers placed on it (ignoring the uuids in foreign), else what differs.
func (f *fleet) converged(foreign map[string]bool) string {
	want, _, err := f.placement()
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var diffs []string
	for _, h := range f.lab.Hosts {
		running, err := libvirtUUIDs(ctx, h, false)
		if err != nil {
			return err.Error()
		}
		for uuid := range foreign {
			delete(running, uuid)
		}
		for uuid := range want[h.Name] {
			if !running[uuid] {
				diffs = append(diffs, fmt.Sprintf("%s: %s placed here, not running", h.Name, uuid))
			}
		}
		for uuid := range running {
			if !want[h.Name][uuid] {
				diffs = append(diffs, fmt.Sprintf("%s: %s running, not placed here", h.Name, uuid))
			}
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "; ")
}

// setMgmtLink brings host i's management link up or down.
func (f *fleet) setMgmtLink(t *testing.T, i int, up bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.lab.Hosts[i].SetLink(ctx, lab.NetMgmt, up); err != nil {
		t.Fatal(err)
	}
}
