package integration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"

	"github.com/chime-ha/chime/chime/api"
)

// TestServersSurviveLeaderKillAndFullRestart is issue 2's end-to-end check:
// three real server processes, 100 VMs created through the CLI, kill -9 of
// the leader, a new leader, nothing lost, and everything still there after
// all three are stopped and started again. The servers and the CLI run on
// mutual TLS (the default outside --dev).
func TestServersSurviveLeaderKillAndFullRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ss := newServerSet(t, "127.0.0.1")
	l := ss.leader(60 * time.Second)
	t.Logf("leader: %s", ss.names[l])
	ss.bootstrapACL() // the CLI below carries the management token (CHIME_TOKEN)

	// A node with room for everything, registered as an agent would (its
	// agent certificate is the join credential).
	reg, err := ss.tls.agentClient(ss.addr(0)).Register(ctx, api.RegisterRequest{ID: "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b",
		Name: "hv-big", APIAddr: "127.0.0.1:1", VCPUs: 512, MemoryMiB: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_ = reg

	// 100 VMs through the CLI, spread over the three servers' addresses.
	var lat []time.Duration
	for i := 0; i < 100; i++ {
		start := time.Now()
		out, err := ss.cli(ctx, i%3, "vm", "create", fmt.Sprintf("vm-%03d", i), "--vcpus", "1", "--memory", "64")
		if err != nil {
			t.Fatalf("create vm-%03d: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		if !strings.Contains(out, fmt.Sprintf("vm-%03d", i)) {
			t.Fatalf("create output does not name the VM: %q", out)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("CLI write latency over 100 creates (process start included): p50 %s, p90 %s, max %s",
		lat[50].Round(time.Millisecond), lat[90].Round(time.Millisecond), lat[99].Round(time.Millisecond))

	// Bad input through the CLI: non-zero exit, the field named, nothing created.
	for _, bad := range [][]string{
		{"vm", "create", "Bad_Name", "--vcpus", "1", "--memory", "64"},
		{"vm", "create", "x", "--vcpus", "0", "--memory", "64"},
		{"vm", "create", "x", "--vcpus", "1", "--memory", "8"},
		{"vm", "create", "vm-000", "--vcpus", "1", "--memory", "64"},
		{"vm", "show", "no-such-vm"},
		{"vm", "list", "-o", "yaml"},
	} {
		if out, err := ss.cli(ctx, 0, bad...); err == nil {
			t.Fatalf("chime %v succeeded: %s", bad, out)
		}
	}

	// kill -9 the leader.
	killAt := time.Now()
	ss.procs[l].kill()
	nl := ss.leader(60 * time.Second)
	t.Logf("leader failover: %s killed, %s leader after %s", ss.names[l], ss.names[nl], time.Since(killAt).Round(time.Millisecond))
	if nl == l {
		t.Fatalf("killed server still leader")
	}
	for i := range ss.procs {
		if i == l {
			continue
		}
		// Local reads may trail the new leader by a few ms: poll.
		wait.For(t, 30*time.Second, ss.names[i]+" lists all 100 VMs after the leader kill", func() (bool, string) {
			var vms []structs.VM
			if err := ss.cliJSON(ctx, i, &vms, "vm", "list"); err != nil {
				return false, err.Error()
			}
			if len(vms) != 100 {
				return false, fmt.Sprintf("%d VMs", len(vms))
			}
			return true, ""
		})
	}
	survivor := (l + 1) % 3
	if _, err := ss.cli(ctx, survivor, "vm", "create", "after-kill", "--vcpus", "1", "--memory", "64"); err != nil {
		t.Fatalf("write after the leader kill: %v", err)
	}

	// Stop all three, start all three: the state is still there.
	ss.stopAll()
	var wg sync.WaitGroup
	for i := range ss.procs {
		wg.Add(1)
		go func(i int) { defer wg.Done(); ss.start(i) }(i)
	}
	wg.Wait()
	ss.leader(60 * time.Second)
	for i := range ss.procs {
		wait.For(t, 30*time.Second, "state after full restart on "+ss.names[i], func() (bool, string) {
			var vms []structs.VM
			if err := ss.cliJSON(ctx, i, &vms, "vm", "list"); err != nil {
				return false, err.Error()
			}
			if len(vms) != 101 {
				return false, fmt.Sprintf("%d VMs", len(vms))
			}
			return true, ""
		})
	}
	var nodes []structs.Node
	if err := ss.cliJSON(ctx, 0, &nodes, "node", "list"); err != nil || len(nodes) != 1 {
		t.Fatalf("nodes after restart: %v %v", nodes, err)
	}
	var peers []api.Peer
	if err := ss.cliJSON(ctx, 0, &peers, "operator", "raft", "list-peers"); err != nil || len(peers) != 3 {
		t.Fatalf("raft peers after restart: %v %v", peers, err)
	}
}
