package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"
)

// TestAgentEmptyDataDir checks uniqueness rule 10 ("identity is per host")
// and issue 12's re-registration by host identity on real libvirt, with
// the built binary on mutual TLS and ACLs: every node's id is its host's
// libvirt host UUID (the lab gives each host's libvirtd its own
// host_uuid).
//
// 1. An agent restarted with an empty data dir comes back as the same
// node with a new secret, let in without any operator action: it presents
// the join credential (its agent certificate, and the join token) and the
// host identity the node is bound to (host UUID, machine id, address, the
// certificate's names). The node keeps its id and its VMs (no qemu
// restarted or moved), and the agent manages them (a qemu killed is
// started again there).
//
// 2. The same agent restarted with an empty data dir and an agent
// certificate of another holder (common name "imposter": another host
// identity) is refused with an identity conflict (the NodeIdentityConflict
// alarm), answers the ping-back "not registered", so the node becomes
// unreachable instead of looking alive; it starts and destroys nothing
// meanwhile (a qemu killed then stays down). `chime node reset-secret`
// (the operator vouching for the host) lets it register with a new
// secret and rebinds the node; the node is normal again and the killed VM
// is restarted there.
//
// No second node appears, and the uniqueness checker watches throughout.
func TestAgentEmptyDataDir(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)

	nodes, err := f.nodesByName()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range f.lab.Hosts {
		if n := nodes[h.Name]; n.ID != strings.ToLower(h.HostUUID) {
			t.Fatalf("node %s has id %s; want its libvirt host UUID %s", h.Name, n.ID, h.HostUUID)
		}
	}

	var vms []structs.VM
	on := map[int][]string{}
	for k := 0; k < 4; k++ {
		vm := f.createVM(t, fmt.Sprintf("ident-%d", k))
		vms = append(vms, vm)
		hi, _, _ := f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
		on[hi] = append(on[hi], vm.ID)
	}
	i := -1
	for hi, ids := range on {
		if i < 0 || len(ids) > len(on[i]) {
			i = hi
		}
	}
	h := f.lab.Hosts[i]
	node := nodes[h.Name]
	t.Logf("victim %s (node %s) runs %v", h.Name, node.ID, on[i])

	seq := f.lastEventSeq(t)
	before, err := f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	victim := on[i][0]
	nodeIs := func(want string) func() (bool, string) {
		return func() (bool, string) {
			ns, err := f.nodesByName()
			if err != nil {
				return false, err.Error()
			}
			n := ns[h.Name]
			return n.MonitorState == want && n.ID == node.ID && !n.SecretReset, fmt.Sprintf("%s %s reset=%v", n.ID, n.MonitorState, n.SecretReset)
		}
	}

	// 1. Empty data dir, same host identity: back without the operator.
	f.killAgent(i)
	if err := os.RemoveAll(f.agentDir(i)); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	f.startAgent(i)
	var replaced string
	took := wait.For(t, 60*time.Second, h.Name+" re-registered with a new secret by host identity", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ev, _, err := f.ss.clientAll().Events(ctx, seq, api.QueryOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, e := range ev {
			if e.Kind == "node.secret_replaced" && e.NodeID == node.ID && e.Seq > seq {
				replaced = e.Message
				return true, ""
			}
		}
		return false, "no node.secret_replaced event yet"
	})
	t.Logf("agent restarted with an empty data dir → re-registered after %s: %s", took.Round(100*time.Millisecond), replaced)
	if !strings.Contains(replaced, "host identity") {
		t.Fatalf("secret replaced by %q, want by the host identity (no operator ran reset-secret)", replaced)
	}
	wait.For(t, 60*time.Second, h.Name+" normal with its new secret", nodeIs(structs.MonitorNormal))
	f.waitAgentSynced(t, i)
	ns, err := f.nodesByName()
	if err != nil {
		t.Fatal(err)
	}
	if b := ns[h.Name].Binding; b == nil || b.HostUUID != node.ID || b.Address != h.MgmtIP || !b.TLS {
		t.Fatalf("node %s bound to %+v, want host uuid %s, address %s, an agent certificate", h.Name, b, node.ID, h.MgmtIP)
	}
	if len(ns) != len(f.lab.Hosts) {
		t.Fatalf("%d nodes after the restart, want %d (no new identity)", len(ns), len(f.lab.Hosts))
	}
	now, err := f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := diffSnapshots(before, now); d != "" {
		t.Fatalf("qemu processes changed across the re-registration: %s", d)
	}
	// The agent manages its VMs: a qemu killed is started again there.
	killQemu(t, before, victim, h.Name)
	took = wait.For(t, 60*time.Second, "the killed qemu of "+victim+" started again on "+h.Name, func() (bool, string) {
		snap, err := f.qemuSnapshot(context.Background())
		if err != nil {
			return false, err.Error()
		}
		now = snap
		return snap[victim] != "" && snap[victim] != before[victim] && strings.HasPrefix(snap[victim], h.Name+"/"), snap[victim]
	})
	t.Logf("killed qemu of %s restarted on %s by the re-registered agent after %s (%s → %s)", victim, h.Name, took.Round(100*time.Millisecond), before[victim], now[victim])
	before = now

	// 2. Empty data dir and another holder's certificate: refused, an
	// identity conflict, until the operator's reset-secret.
	seq = f.lastEventSeq(t)
	f.killAgent(i)
	if err := os.RemoveAll(f.agentDir(i)); err != nil {
		t.Fatal(err)
	}
	if f.agentTLS == nil {
		f.agentTLS = map[int]tlsconf.Files{}
	}
	f.agentTLS[i] = f.tls.agentCert(t, "imposter")
	f.startAgent(i)
	took = wait.For(t, 90*time.Second, h.Name+" unreachable (the ping-back is answered by an unregistered agent)", func() (bool, string) {
		ok, msg := nodeIs(structs.MonitorUnreachable)()
		return ok, msg
	})
	t.Logf("agent restarted with another identity → node unreachable after %s", took.Round(100*time.Millisecond))
	conflict := f.eventSince(t, "node.identity_conflict", h.Name, seq)
	t.Logf("conflict: %s", conflict)
	if !strings.Contains(conflict, "another host identity") || !strings.Contains(conflict, "imposter") {
		t.Fatalf("identity conflict %q does not name another host identity and the certificate", conflict)
	}
	wait.For(t, 30*time.Second, "alarm NodeIdentityConflict firing for "+h.Name, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		alarms, err := f.ss.clientAll().Alarms(ctx)
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, a := range alarms {
			if a.Name == "NodeIdentityConflict" && a.Status == "firing" && strings.Contains(a.Summary, h.Name) {
				return true, ""
			}
			seen = append(seen, a.Name+"/"+a.Status)
		}
		return false, fmt.Sprint(seen)
	})
	unreach := f.eventSince(t, "node.unreachable", h.Name, seq)
	if !strings.Contains(unreach, "not registered") {
		t.Fatalf("unreachable event %q does not say the answering agent is not registered", unreach)
	}
	if ns, err := f.nodeList(); err != nil || len(ns) != len(f.lab.Hosts) {
		t.Fatalf("%d nodes after the refused restart (%v), want %d (no new identity)", len(ns), err, len(f.lab.Hosts))
	}
	now, err = f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := diffSnapshots(before, now); d != "" {
		t.Fatalf("qemu processes changed while the agent was unregistered: %s", d)
	}

	// Unregistered, the agent starts nothing: a qemu killed now stays down.
	killQemu(t, before, victim, h.Name)
	down := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hosts, err := f.where(ctx, victim)
		if err != nil {
			return err.Error()
		}
		if len(hosts) > 0 {
			return fmt.Sprintf("runs on %v", hosts)
		}
		return ""
	}
	wait.For(t, 20*time.Second, "libvirt reports the killed VM stopped", func() (bool, string) {
		msg := down()
		return msg == "", msg
	})
	holdFor(t, 10*time.Second, "the killed VM stays down while its agent is unregistered", down)

	// The runbook: the operator vouches for the host and lets the agent
	// in with a new secret; the node is bound to the new certificate.
	out := f.mustChime(t, "node", "reset-secret", h.Name)
	t.Logf("chime node reset-secret %s:\n%s", h.Name, out)
	wait.For(t, 60*time.Second, h.Name+" normal again", nodeIs(structs.MonitorNormal))
	t.Logf("replaced: %s", f.eventSince(t, "node.secret_replaced", h.Name, seq))
	if ns, err := f.nodesByName(); err != nil || ns[h.Name].Binding == nil || ns[h.Name].Binding.CertNames != "cn:imposter" {
		t.Fatalf("binding after the reset: %+v (%v), want the new certificate's names", ns[h.Name].Binding, err)
	}
	f.waitAgentSynced(t, i)
	back, _, _ := f.waitRunningOnOneHost(t, victim, 60*time.Second)
	if back != i {
		t.Fatalf("VM %s runs on %s after the return, want %s (still placed there)", victim, f.lab.Hosts[back].Name, h.Name)
	}
	t.Logf("both restarts → node normal and its crashed VM running again after %s", time.Since(t0).Round(100*time.Millisecond))
	final, err := f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.ID != victim && final[vm.ID] != before[vm.ID] {
			t.Fatalf("VM %s: qemu %s before, %s after: restarted or moved though it never stopped", vm.Name, before[vm.ID], final[vm.ID])
		}
	}
	if ns, err := f.nodeList(); err != nil || len(ns) != len(f.lab.Hosts) {
		t.Fatalf("nodes at the end: %d, %v; want %d", len(ns), err, len(f.lab.Hosts))
	}
	u.check(t)
}

// killQemu sends SIGKILL to the qemu of vm, which snap says runs on host
// name ("name/pid").
func killQemu(t *testing.T, snap map[string]string, vm, name string) {
	t.Helper()
	pid := 0
	if _, err := fmt.Sscanf(snap[vm][len(name)+1:], "%d", &pid); err != nil {
		t.Fatalf("pid of %s in %q: %v", vm, snap[vm], err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill qemu %d: %v", pid, err)
	}
}
