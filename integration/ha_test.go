package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"
)

// TestHALiveMigration checks vm migrate and node evacuate on real libvirt:
// the VMs move live (the destination reports "running (migrated)", the qemu
// process changes host, the guest is not restarted) and no VM ever runs on
// two hosts outside libvirt's own hand-over.
func TestHALiveMigration(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	var vms []structs.VM
	for i := 0; i < 4; i++ {
		vms = append(vms, f.createVM(t, fmt.Sprintf("mig-%d", i)))
	}
	for _, vm := range vms {
		f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
	}

	t.Run("VMMigrate", func(t *testing.T) {
		vm := vms[0]
		src, _, _ := f.waitRunningOnOneHost(t, vm.ID, 30*time.Second)
		dst := (src + 1) % len(f.lab.Hosts)
		start := time.Now()
		var task structs.Task
		if err := f.chimeJSON(&task, "vm", "migrate", vm.Name, "--to", f.lab.Hosts[dst].Name); err != nil {
			t.Fatal(err)
		}
		f.waitTask(t, task.ID, structs.TaskSucceeded, 3*time.Minute)
		host, _, _ := f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
		if host != dst {
			t.Fatalf("vm runs on %s after migrating to %s", f.lab.Hosts[host].Name, f.lab.Hosts[dst].Name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		reason, _ := f.lab.Hosts[dst].Virsh(ctx, "domstate", "--reason", vm.ID)
		if !strings.Contains(reason, "migrated") {
			t.Fatalf("destination reports %q, want running (migrated): the VM was restarted, not live-migrated", strings.TrimSpace(reason))
		}
		t.Logf("vm migrate %s → %s took %s (task %s)", f.lab.Hosts[src].Name, f.lab.Hosts[dst].Name, time.Since(start).Round(time.Millisecond), task.ID)
		// The placement follows with a new generation, and stays.
		got := f.vmByName(t, vm.Name)
		if f.nodes[got.NodeID] != f.lab.Hosts[dst].Name || got.Generation <= vm.Generation {
			t.Fatalf("placement after migrate: node %s generation %d (was %d)", got.NodeID, got.Generation, vm.Generation)
		}
		holdFor(t, 5*time.Second, "the migrated VM keeps running on its destination only", func() string {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			hosts, err := f.where(ctx, vm.ID)
			if err != nil {
				return ""
			}
			if len(hosts) != 1 || hosts[0] != f.lab.Hosts[dst].Name {
				return fmt.Sprintf("runs on %v", hosts)
			}
			return ""
		})
	})

	t.Run("NodeEvacuate", func(t *testing.T) {
		// Evacuate the host that runs most VMs.
		count := map[int]int{}
		for _, vm := range vms {
			h, _, _ := f.waitRunningOnOneHost(t, vm.ID, 30*time.Second)
			count[h]++
		}
		src := 0
		for h, n := range count {
			if n > count[src] {
				src = h
			}
		}
		name := f.lab.Hosts[src].Name
		start := time.Now()
		var task structs.Task
		if err := f.chimeJSON(&task, "node", "evacuate", name); err != nil {
			t.Fatal(err)
		}
		f.waitTask(t, task.ID, structs.TaskSucceeded, 5*time.Minute)
		t.Logf("evacuated %d VMs from %s in %s", count[src], name, time.Since(start).Round(time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		left, err := libvirtUUIDs(ctx, f.lab.Hosts[src], false)
		if err != nil {
			t.Fatal(err)
		}
		for _, vm := range vms {
			if left[vm.ID] {
				t.Fatalf("vm %s still runs on evacuated %s", vm.Name, name)
			}
			f.waitRunningOnOneHost(t, vm.ID, 60*time.Second)
		}
		var n structs.Node
		if err := f.chimeJSON(&n, "node", "show", name); err != nil || n.ManagementState != structs.NodeDisabled {
			t.Fatalf("evacuated node: %+v %v, want disabled", n.ManagementState, err)
		}
		f.mustChime(t, "node", "enable", name)
	})
	u.check(t)
}

// waitTask waits until a task reaches state.
func (f *fleet) waitTask(t *testing.T, id, state string, timeout time.Duration) {
	t.Helper()
	wait.For(t, timeout, "task "+id+" "+state, func() (bool, string) {
		var task structs.Task
		if err := f.chimeJSON(&task, "task", "show", id); err != nil {
			return false, err.Error()
		}
		if task.State == structs.TaskFailed && state != structs.TaskFailed {
			t.Fatalf("task %s failed: %s (%+v)", id, task.Error, task.Steps)
		}
		if task.State != state {
			return false, fmt.Sprintf("state %s, steps %+v", task.State, task.Steps)
		}
		return true, ""
	})
}

func (f *fleet) vmByName(t *testing.T, name string) structs.VM {
	t.Helper()
	var vm structs.VM
	if err := f.chimeJSON(&vm, "vm", "show", name); err != nil {
		t.Fatal(err)
	}
	return vm
}
