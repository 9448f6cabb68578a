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

// TestLeaderKilledDuringMigration kills the leading server while libvirt
// is live-migrating a VM (uniqueness rule 8): the migration's outcome must
// be settled on evidence — the source's report of libvirt's result, or the
// destination running the domain — never by a timeout measured on the dead
// leader's timestamps, and never by starting a fresh copy. In the second
// case the source agent is killed as well, so the report of the first
// attempt is lost and its restarted process must not take "the domain is
// not here" for success. Each case ends with the VM running on exactly one
// host, its placement naming that host, and the uniqueness checker (which
// polls every host's qemu processes throughout) seeing no second copy
// outside libvirt's own hand-over.
//
// The migration is slowed down (virsh migrate-setspeed) so that the kill
// lands inside it; the test checks that it did.
func TestLeaderKilledDuringMigration(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	tests := []struct {
		name        string
		killSource  bool // also kill (and restart) the source's agent mid-migration
		settleLimit time.Duration
	}{
		{"leader killed", false, 4 * time.Minute},
		{"leader and source agent killed", true, 6 * time.Minute},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := f.createVM(t, fmt.Sprintf("lk-%d", i))
			src, _, _ := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
			dst := (src + 1) % len(f.lab.Hosts)
			srcHost, dstHost := f.lab.Hosts[src], f.lab.Hosts[dst]
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if out, err := srcHost.Virsh(ctx, "migrate-setspeed", vm.ID, "1"); err != nil {
				cancel()
				t.Fatalf("migrate-setspeed on %s: %v (%s)", srcHost.Name, err, out)
			}
			cancel()

			var task structs.Task
			if err := f.chimeJSON(&task, "vm", "migrate", vm.Name, "--to", dstHost.Name); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			// The migration is under way once the destination's libvirt
			// has the incoming domain.
			wait.For(t, 60*time.Second, "the incoming domain on "+dstHost.Name, func() (bool, string) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				st, err := dstHost.Virsh(ctx, "domstate", "--reason", vm.ID)
				if err != nil {
					return false, "not defined there yet"
				}
				return true, strings.TrimSpace(st)
			})
			leader := f.ss.leader(30 * time.Second)
			f.ss.procs[leader].kill()
			// Back before the next case, also when this one fails: the next
			// kill must leave a majority.
			defer func() {
				if !f.ss.procs[leader].running() {
					f.ss.start(leader)
				}
			}()
			if tt.killSource {
				f.killAgent(src)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			during, _ := dstHost.Virsh(ctx, "domstate", "--reason", vm.ID)
			cancel()
			during = strings.TrimSpace(during)
			t.Logf("killed leader s%d%s %s after the migration began; destination %s then: %q",
				leader+1, map[bool]string{true: " and the source agent", false: ""}[tt.killSource],
				time.Since(start).Round(time.Millisecond), dstHost.Name, during)
			if !strings.HasPrefix(during, "paused") {
				t.Errorf("the kill did not land inside the migration (destination %q): the test did not test what it says", during)
			}
			if tt.killSource {
				time.Sleep(3 * time.Second) // the agent stays dead a moment, as after a crash
				f.startAgent(src)
			}
			f.waitLeader(t, 60*time.Second)

			// Settled on evidence: one host runs it, the placement names that
			// host, no migration is recorded any more, the task finished.
			var got structs.VM
			took := wait.For(t, tt.settleLimit, "vm "+vm.Name+" settled on one host", func() (bool, string) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				hosts, err := f.where(ctx, vm.ID)
				if err != nil {
					return false, err.Error()
				}
				got = structs.VM{} // decoding into the last answer would keep fields absent now
				if err := f.chimeJSON(&got, "vm", "show", vm.Name); err != nil {
					return false, err.Error()
				}
				if len(hosts) != 1 || f.nodes[got.NodeID] != hosts[0] || got.Migration != nil {
					return false, fmt.Sprintf("runs on %v, placed on %s (state %s), migration %+v", hosts, f.nodes[got.NodeID], got.State, got.Migration)
				}
				return true, ""
			})
			var final structs.Task
			wait.For(t, 60*time.Second, "task "+task.ID+" finished", func() (bool, string) {
				if err := f.chimeJSON(&final, "task", "show", task.ID); err != nil {
					return false, err.Error()
				}
				return final.State == structs.TaskSucceeded || final.State == structs.TaskFailed, final.State
			})
			on := f.nodes[got.NodeID]
			t.Logf("settled %s after the kill: vm on %s, task %s %q, steps %+v", took.Round(time.Millisecond), on, final.State, final.Error, final.Steps)
			switch {
			case final.State == structs.TaskSucceeded && on != dstHost.Name:
				t.Fatalf("task succeeded but the vm runs on %s, not on the destination %s", on, dstHost.Name)
			case final.State == structs.TaskFailed && on != srcHost.Name:
				t.Fatalf("task failed but the vm runs on %s, not on its source %s", on, srcHost.Name)
			}
			if on == dstHost.Name {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				reason, _ := dstHost.Virsh(ctx, "domstate", "--reason", vm.ID)
				cancel()
				if !strings.Contains(reason, "migrated") {
					t.Fatalf("destination reports %q, want running (migrated): a fresh copy was started instead of the migrated one", strings.TrimSpace(reason))
				}
			}
			// It stays where it is.
			holdFor(t, 5*time.Second, "the settled VM keeps running on one host", func() string {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				hosts, err := f.where(ctx, vm.ID)
				if err != nil {
					return ""
				}
				if len(hosts) != 1 || hosts[0] != on {
					return fmt.Sprintf("runs on %v", hosts)
				}
				return ""
			})
			f.ss.start(leader)
			f.waitLeader(t, 60*time.Second)
			f.waitNodesNormal(t, 90*time.Second)
		})
	}
	u.check(t)
}
