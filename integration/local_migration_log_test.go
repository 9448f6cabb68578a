package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"
)

// TestLocalMigrationThenRebuild checks uniqueness rule 7 on real libvirt
// (issue 11, root cause 2): with the destination's management link down,
// `chime agent migrate` on the source moves a VM over the business network.
// The destination cannot tell the servers, so the source's migration log
// must: the servers place the VM on the destination (with its adopt
// generation) while the destination is still unreachable. A drain and a
// rebuild of the source then leave that VM where it runs: it is never
// started a second time, and when the destination's link returns nothing
// changes. The uniqueness checker watches the whole run.
func TestLocalMigrationThenRebuild(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	// Five VMs on three hosts: the source runs at least two, so that its
	// rebuild re-places one while leaving the migrated one alone.
	src, on := f.busiestHost(t, "miglog", 5, 90*time.Second)
	dst := (src + 1) % len(f.lab.Hosts)
	h, d := f.lab.Hosts[src], f.lab.Hosts[dst]
	moved := on[src][0]
	t.Logf("source %s runs %v; moving %s to %s", h.Name, on[src], moved, d.Name)

	nodeState := func(name string) (structs.Node, error) {
		var n structs.Node
		err := f.chimeJSON(&n, "node", "show", name)
		return n, err
	}
	f.setMgmtLink(t, dst, false)
	wait.For(t, 2*time.Minute, "destination "+d.Name+" unreachable", func() (bool, string) {
		n, err := nodeState(d.Name)
		if err != nil {
			return false, err.Error()
		}
		return n.MonitorState == structs.MonitorUnreachable, n.MonitorState
	})
	before, err := vmShow(f, moved)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	out, err := h.Command(ctx, chimeBin, "agent", "migrate", "--interface", h.BizIf, "--uuid", moved, "--dest", d.BizIP,
		"--socket", filepath.Join(f.agentDir(src), "agent.sock")).CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("on %s: chime agent migrate: %v\n%s", h.Name, err, out)
	}
	t.Logf("on %s: chime agent migrate:\n%s", h.Name, out)
	if hi, _, _ := f.waitRunningOnOneHost(t, moved, time.Minute); hi != dst {
		t.Fatalf("%s runs on %s, migrated to %s", moved, f.lab.Hosts[hi].Name, d.Name)
	}

	// The source's log moves the placement while the destination is
	// still cut off: only the source can have told the servers.
	took := wait.For(t, time.Minute, "servers place "+moved+" on "+d.Name+" from the source's log", func() (bool, string) {
		vm, err := vmShow(f, moved)
		if err != nil {
			return false, err.Error()
		}
		return f.nodes[vm.NodeID] == d.Name, "placed on " + f.nodes[vm.NodeID]
	})
	vm, err := vmShow(f, moved)
	if err != nil {
		t.Fatal(err)
	}
	if vm.AdoptGeneration != before.Generation || vm.Generation <= before.Generation {
		t.Fatalf("%s placed on %s at generation %d adopting %d; want a new generation adopting %d",
			moved, d.Name, vm.Generation, vm.AdoptGeneration, before.Generation)
	}
	if n, err := nodeState(d.Name); err != nil || n.MonitorState != structs.MonitorUnreachable {
		t.Fatalf("destination %s is %s (%v) after the placement moved: the test wanted it unreachable", d.Name, n.MonitorState, err)
	}
	t.Logf("placement moved to unreachable %s %s after the migration (generation %d, adopt %d)",
		d.Name, took.Round(100*time.Millisecond), vm.Generation, vm.AdoptGeneration)

	// Drain and rebuild the source: the moved VM is not part of it.
	f.mustChime(t, "node", "drain", h.Name)
	wait.For(t, 2*time.Minute, "drain of "+h.Name+" acknowledged", func() (bool, string) {
		n, err := nodeState(h.Name)
		if err != nil {
			return false, err.Error()
		}
		return n.DrainAcked, fmt.Sprintf("drain_acked %v", n.DrainAcked)
	})
	rebuild := f.mustChime(t, "node", "rebuild", h.Name)
	t.Logf("rebuild of %s: %s", h.Name, strings.TrimSpace(rebuild))
	if len(on[src]) < 2 {
		t.Fatalf("the source ran %v: nothing but the migrated VM to rebuild", on[src])
	}
	for _, id := range on[src][1:] {
		if hi, _, _ := f.waitRunningOnOneHost(t, id, 2*time.Minute); hi == src {
			t.Fatalf("%s still runs on the rebuilt source %s", id, h.Name)
		}
	}
	t.Logf("rebuild of %s re-placed %d VMs and left %s on %s", h.Name, len(on[src])-1, moved, d.Name)
	holdFor(t, 10*time.Second, moved+" stays placed and running on "+d.Name+" only", func() string {
		vm, err := vmShow(f, moved)
		if err != nil {
			return err.Error()
		}
		if f.nodes[vm.NodeID] != d.Name {
			return "placed on " + f.nodes[vm.NodeID]
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		where, err := f.where(ctx, moved)
		if err != nil {
			return err.Error()
		}
		if len(where) != 1 || where[0] != d.Name {
			return fmt.Sprintf("runs on %v", where)
		}
		return ""
	})

	// The destination comes back: it adopts what the servers already
	// placed on it; nothing moves, nothing starts twice.
	f.setMgmtLink(t, dst, true)
	wait.For(t, 2*time.Minute, "destination "+d.Name+" normal again", func() (bool, string) {
		n, err := nodeState(d.Name)
		if err != nil {
			return false, err.Error()
		}
		return n.MonitorState == structs.MonitorNormal, n.MonitorState
	})
	wait.For(t, time.Minute, moved+" observed running on "+d.Name, func() (bool, string) {
		vm, err := vmShow(f, moved)
		if err != nil {
			return false, err.Error()
		}
		return f.nodes[vm.NodeID] == d.Name && vm.State == structs.StateRunning, fmt.Sprintf("%s on %s", vm.State, f.nodes[vm.NodeID])
	})
	if hi, _, _ := f.waitRunningOnOneHost(t, moved, time.Minute); hi != dst {
		t.Fatalf("%s runs on %s after the destination returned, want %s", moved, f.lab.Hosts[hi].Name, d.Name)
	}
	f.mustChime(t, "node", "enable", h.Name)
	u.check(t)
}

// vmShow is `chime vm show ID` as JSON.
func vmShow(f *fleet, id string) (structs.VM, error) {
	var vm structs.VM
	err := f.chimeJSON(&vm, "vm", "show", id)
	return vm, err
}
