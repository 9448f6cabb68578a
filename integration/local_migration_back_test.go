package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"
)

// TestLocalMigrationThereAndBack is random seed 4147 of the simulator on
// real libvirt (scenario local-migration-there-and-back-unsynced): a VM
// goes by `chime agent migrate` from A to B while B's management link is
// down (A's migration log places it on B, adopting its generation G), then
// back from B to A while A's link is down too. B comes back first: its
// first sync says "run the VM here" (the placement that adopted G), but
// the copy of G left B again. B must not start it (the fence of a
// handed-away generation covers a placement adopting it), and B's own log
// entry moves the placement to A, where the VM still runs. The
// uniqueness checker watches the whole run: before the fix, B started a
// second copy while A's kept running.
func TestLocalMigrationThereAndBack(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	a, on := f.busiestHost(t, "back", 4, 90*time.Second)
	b := (a + 1) % len(f.lab.Hosts)
	ha, hb := f.lab.Hosts[a], f.lab.Hosts[b]
	moved := on[a][0]
	t.Logf("%s runs %v; %s goes to %s and back", ha.Name, on[a], moved, hb.Name)

	migrate := func(from, to int) {
		t.Helper()
		h := f.lab.Hosts[from]
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := h.Command(ctx, chimeBin, "agent", "migrate", "--interface", h.BizIf, "--uuid", moved, "--dest", f.lab.Hosts[to].BizIP,
			"--socket", filepath.Join(f.agentDir(from), "agent.sock")).CombinedOutput()
		if err != nil {
			t.Fatalf("on %s: chime agent migrate: %v\n%s", h.Name, err, out)
		}
		if hi, _, _ := f.waitRunningOnOneHost(t, moved, time.Minute); hi != to {
			t.Fatalf("%s runs on %s, migrated to %s", moved, f.lab.Hosts[hi].Name, f.lab.Hosts[to].Name)
		}
	}
	placedOn := func(want string) func() (bool, string) {
		return func() (bool, string) {
			vm, err := vmShow(f, moved)
			if err != nil {
				return false, err.Error()
			}
			return f.nodes[vm.NodeID] == want, "placed on " + f.nodes[vm.NodeID]
		}
	}

	f.setMgmtLink(t, b, false)
	f.waitMonitor(t, f.lab.Hosts[b].Name, structs.MonitorUnreachable, time.Now(), 2*time.Minute)
	migrate(a, b)
	wait.For(t, time.Minute, "servers place "+moved+" on "+hb.Name+" from "+ha.Name+"'s log", placedOn(hb.Name))
	vm, err := vmShow(f, moved)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("placed on %s at generation %d adopting %d", hb.Name, vm.Generation, vm.AdoptGeneration)

	f.setMgmtLink(t, a, false)
	f.waitMonitor(t, f.lab.Hosts[a].Name, structs.MonitorUnreachable, time.Now(), 2*time.Minute)
	migrate(b, a)

	// B returns first: it must not start the VM the placement names.
	f.setMgmtLink(t, b, true)
	f.waitMonitor(t, f.lab.Hosts[b].Name, structs.MonitorNormal, time.Now(), 2*time.Minute)
	took := wait.For(t, time.Minute, "servers place "+moved+" on "+ha.Name+" from "+hb.Name+"'s log", placedOn(ha.Name))
	t.Logf("%s's log moved the placement back to %s %s after its return", hb.Name, ha.Name, took.Round(100*time.Millisecond))
	holdFor(t, 10*time.Second, moved+" runs on "+ha.Name+" only while "+ha.Name+" is cut off", func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		where, err := f.where(ctx, moved)
		if err != nil {
			return err.Error()
		}
		if len(where) != 1 || where[0] != ha.Name {
			return fmt.Sprintf("runs on %v", where)
		}
		return ""
	})

	// A returns: it adopts what the servers placed on it; nothing moves.
	f.setMgmtLink(t, a, true)
	f.waitMonitor(t, f.lab.Hosts[a].Name, structs.MonitorNormal, time.Now(), 2*time.Minute)
	wait.For(t, time.Minute, moved+" observed running on "+ha.Name, func() (bool, string) {
		vm, err := vmShow(f, moved)
		if err != nil {
			return false, err.Error()
		}
		return f.nodes[vm.NodeID] == ha.Name && vm.State == structs.StateRunning, fmt.Sprintf("%s on %s", vm.State, f.nodes[vm.NodeID])
	})
	if hi, _, _ := f.waitRunningOnOneHost(t, moved, time.Minute); hi != a {
		t.Fatalf("%s runs on %s at the end, want %s", moved, f.lab.Hosts[hi].Name, ha.Name)
	}
	u.check(t)
}
