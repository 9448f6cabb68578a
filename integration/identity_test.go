package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"
)

// TestAgentEmptyDataDir checks uniqueness rule 10 ("identity is per host")
// on real libvirt (issue 11, root cause 6): every node's id is its host's
// libvirt host UUID (the lab gives each host's libvirtd its own host_uuid).
// An agent restarted with an empty data dir comes back as the same node,
// is refused for want of the lost secret (an event), answers the
// ping-back "not registered", so the node becomes unreachable instead of
// looking alive; it starts and destroys nothing meanwhile (a qemu killed
// then stays down). `chime node reset-secret` lets it register with a new
// secret; the node is normal again and the agent manages its VMs (the
// killed one is restarted there). No second node appears, and the
// uniqueness checker watches throughout.
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
	f.killAgent(i)
	if err := os.RemoveAll(f.agentDir(i)); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	f.startAgent(i)

	took := wait.For(t, 90*time.Second, h.Name+" unreachable (the ping-back is answered by an unregistered agent)", func() (bool, string) {
		ns, err := f.nodesByName()
		if err != nil {
			return false, err.Error()
		}
		n := ns[h.Name]
		return n.MonitorState == structs.MonitorUnreachable, n.MonitorState
	})
	t.Logf("agent restarted with an empty data dir → node unreachable after %s", took.Round(100*time.Millisecond))
	t.Logf("refused: %s", f.eventSince(t, "node.registration_refused", h.Name, seq))
	unreach := f.eventSince(t, "node.unreachable", h.Name, seq)
	if !strings.Contains(unreach, "not registered") {
		t.Fatalf("unreachable event %q does not say the answering agent is not registered", unreach)
	}
	ns, err := f.nodeList()
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != len(f.lab.Hosts) {
		t.Fatalf("%d nodes after the restart, want %d (no new identity)", len(ns), len(f.lab.Hosts))
	}
	now, err := f.qemuSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := diffSnapshots(before, now); d != "" {
		t.Fatalf("qemu processes changed while the agent was unregistered: %s", d)
	}

	// Unregistered, the agent starts nothing: a qemu killed now stays down.
	victim := on[i][0]
	pid := 0
	if _, err := fmt.Sscanf(before[victim][len(h.Name)+1:], "%d", &pid); err != nil {
		t.Fatalf("pid of %s in %q: %v", victim, before[victim], err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill qemu %d: %v", pid, err)
	}
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

	// The runbook: let the agent in with a new secret.
	out := f.mustChime(t, "node", "reset-secret", h.Name)
	t.Logf("chime node reset-secret %s:\n%s", h.Name, out)
	wait.For(t, 60*time.Second, h.Name+" normal again", func() (bool, string) {
		ns, err := f.nodesByName()
		if err != nil {
			return false, err.Error()
		}
		n := ns[h.Name]
		return n.MonitorState == structs.MonitorNormal && n.ID == node.ID && !n.SecretReset, fmt.Sprintf("%s %s reset=%v", n.ID, n.MonitorState, n.SecretReset)
	})
	t.Logf("replaced: %s", f.eventSince(t, "node.secret_replaced", h.Name, seq))
	f.waitAgentSynced(t, i)
	back, _, _ := f.waitRunningOnOneHost(t, victim, 60*time.Second)
	if back != i {
		t.Fatalf("VM %s runs on %s after the return, want %s (still placed there)", victim, f.lab.Hosts[back].Name, h.Name)
	}
	t.Logf("empty data dir → node normal and its crashed VM running again after %s", time.Since(t0).Round(100*time.Millisecond))
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
