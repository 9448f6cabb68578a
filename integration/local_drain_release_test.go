package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// TestEnableReleasesALocalDrain checks finding 11 of the simulator issue on
// real libvirt: `chime agent drain` on a node whose management state is
// `enabled` (a local drain alone changes none), then `chime node enable` on
// the servers: the enable releases the local drain although the node was
// enabled already, the agent clears its flag and starts the node's VMs
// again, where they are placed. Before the fix the enable was a no-op and
// the VMs stayed stopped for good. The uniqueness checker watches
// throughout.
func TestEnableReleasesALocalDrain(t *testing.T) {
	const grace = 5 * time.Second
	f := newFleetWith(t, fleetOptions{AgentArgs: func(int, *lab.Host) []string {
		return []string{"--shutdown-grace", grace.String()}
	}})
	u := startUniquenessChecker(t, f.lab.Hosts)
	i, on := f.busiestHost(t, "release", 3, 60*time.Second)
	h, ids := f.lab.Hosts[i], on[i]
	t.Logf("%s runs %v", h.Name, ids)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := cli(ctx, "agent", "drain", "--socket", filepath.Join(f.agentDir(i), "agent.sock")); err != nil {
		t.Fatalf("chime agent drain: %v: %s", err, out)
	}
	var n structs.Node
	wait.For(t, time.Minute, "the servers know "+h.Name+"'s local drain", func() (bool, string) {
		if err := f.chimeJSON(&n, "node", "show", h.Name); err != nil {
			return false, err.Error()
		}
		return n.LocalDrained && n.LocalDrainID != "", fmt.Sprintf("local_drained %v local_drain_id %q", n.LocalDrained, n.LocalDrainID)
	})
	if n.ManagementState != structs.NodeEnabled {
		t.Fatalf("node %s is %s: the test needs a local drain on an enabled node", h.Name, n.ManagementState)
	}
	stopped := func() (bool, string) {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		running, err := libvirtUUIDs(c, h, false)
		if err != nil {
			return false, err.Error()
		}
		var still []string
		for _, id := range ids {
			if running[id] {
				still = append(still, id)
			}
		}
		return len(still) == 0, fmt.Sprintf("still running on %s: %v", h.Name, still)
	}
	if ok, why := stopped(); !ok {
		t.Fatalf("after the local drain: %s", why)
	}

	out := f.mustChime(t, "node", "enable", h.Name)
	if !strings.Contains(out, h.Name) {
		t.Fatalf("node enable printed %q, want the node", out)
	}
	wait.For(t, time.Minute, "node "+h.Name+" released its local drain", func() (bool, string) {
		if err := f.chimeJSON(&n, "node", "show", h.Name); err != nil {
			return false, err.Error()
		}
		st, err := f.agentStatus(i)
		if err != nil {
			return false, err.Error()
		}
		return n.ReleasedDrainID == n.LocalDrainID && !n.LocalDrained && !st.LocalDrained,
			fmt.Sprintf("released %q (drain %q), node local_drained %v, agent local_drained %v", n.ReleasedDrainID, n.LocalDrainID, n.LocalDrained, st.LocalDrained)
	})
	for _, id := range ids {
		host, _, _ := f.waitRunningOnOneHost(t, id, 2*time.Minute)
		if host != i {
			t.Fatalf("vm %s runs on %s after the release, want %s (where it is placed)", id, f.lab.Hosts[host].Name, h.Name)
		}
	}
	u.check(t)
}
