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

// localDrainGrace is how long the agents wait for a guest to honour an
// ACPI shutdown before destroying it. The test guests have no OS, so every
// guest ignores the shutdown for this long: the window in which a local
// drain is in progress while VMs still run.
const localDrainGrace = 30 * time.Second

// TestLocalDrainEvidence checks uniqueness rule 6 on real libvirt (issue
// 11, root causes 1 and 8): after `chime agent drain` on a node whose
// guests ignore ACPI, the node shows local_drain_state draining and not
// local_drained while its VMs still run; a node drain then cannot be
// acknowledged and a rebuild without --confirm-fenced is refused for as
// long as any of them runs there. Once every VM is stopped the node is
// drained by evidence, the rebuild goes through, and no VM ever runs on two
// hosts (the uniqueness checker watches throughout).
func TestLocalDrainEvidence(t *testing.T) {
	f := newFleetWith(t, fleetOptions{AgentArgs: func(int, *lab.Host) []string {
		return []string{"--shutdown-grace", localDrainGrace.String()}
	}})
	u := startUniquenessChecker(t, f.lab.Hosts)
	i, on := f.busiestHost(t, "drainev", 4, 60*time.Second)
	h, ids := f.lab.Hosts[i], on[i]
	t.Logf("victim %s runs %d VMs: %v", h.Name, len(ids), ids)

	// On the node's console: the local drain blocks until its VMs are
	// stopped (bounded), so it runs beside the checks.
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		out, err := cli(ctx, "agent", "drain", "--socket", filepath.Join(f.agentDir(i), "agent.sock"))
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		drained <- err
	}()
	wait.For(t, localDrainGrace/2, "agent status on "+h.Name+" says draining", func() (bool, string) {
		st, err := f.agentStatus(i)
		if err != nil {
			return false, err.Error()
		}
		return st.LocalDrainState == structs.LocalDraining && !st.LocalDrained,
			fmt.Sprintf("local_drain_state %q local_drained %v", st.LocalDrainState, st.LocalDrained)
	})
	wait.For(t, localDrainGrace/2, "node "+h.Name+" shows draining, not locally drained", func() (bool, string) {
		var n structs.Node
		if err := f.chimeJSON(&n, "node", "show", h.Name); err != nil {
			return false, err.Error()
		}
		if n.LocalDrained {
			t.Fatalf("node %s locally drained while its VMs may still run: %+v", h.Name, n)
		}
		return n.LocalDrainState == structs.LocalDraining, fmt.Sprintf("local_drain_state %q", n.LocalDrainState)
	})
	f.mustChime(t, "node", "drain", h.Name)

	// While any of its VMs runs on the node, no evidence may count: every
	// rebuild attempt is refused. One that is accepted is a violation if a
	// VM still runs there afterwards.
	stillRunning := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		running, err := libvirtUUIDs(ctx, h, false)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, id := range ids {
			if running[id] {
				out = append(out, id)
			}
		}
		return out
	}
	refused, rebuilt := 0, false
	wait.For(t, 3*localDrainGrace, "every VM of "+h.Name+" stopped, rebuilds refused meanwhile", func() (bool, string) {
		before := stillRunning()
		if len(before) == 0 {
			return true, ""
		}
		out, err := f.chime("node", "rebuild", h.Name)
		if err == nil {
			if after := stillRunning(); len(after) > 0 {
				t.Fatalf("rebuild of %s accepted while it still runs %v: %s", h.Name, after, out)
			}
			rebuilt = true
			return true, ""
		}
		if !strings.Contains(err.Error(), "acknowledged") {
			t.Fatalf("rebuild of %s refused for another reason: %v", h.Name, err)
		}
		refused++
		var n structs.Node
		if err := f.chimeJSON(&n, "node", "show", h.Name); err == nil && (n.DrainAcked || n.LocalDrained) {
			if after := stillRunning(); len(after) > 0 {
				t.Fatalf("node %s shows drain evidence (drain_acked %v local_drained %v) while it runs %v",
					h.Name, n.DrainAcked, n.LocalDrained, after)
			}
		}
		return false, fmt.Sprintf("still runs %v (%d rebuilds refused)", before, refused)
	})
	if refused == 0 {
		t.Fatalf("no rebuild was attempted while VMs ran on %s: the test proved nothing", h.Name)
	}
	t.Logf("%d rebuild attempts refused while %s still ran VMs", refused, h.Name)

	n := structs.Node{}
	wait.For(t, time.Minute, "node "+h.Name+" drained by evidence", func() (bool, string) {
		if err := f.chimeJSON(&n, "node", "show", h.Name); err != nil {
			return false, err.Error()
		}
		return n.LocalDrained && n.LocalDrainState == structs.LocalDrainDone && n.DrainAcked,
			fmt.Sprintf("local_drained %v local_drain_state %q drain_acked %v", n.LocalDrained, n.LocalDrainState, n.DrainAcked)
	})
	if err := <-drained; err != nil {
		t.Fatalf("chime agent drain: %v", err)
	}
	if st, err := f.agentStatus(i); err != nil || !st.LocalDrained || st.LocalDrainState != structs.LocalDrainDone {
		t.Fatalf("agent status after the drain: local_drained %v local_drain_state %q (%v)", st.LocalDrained, st.LocalDrainState, err)
	}
	if !rebuilt {
		f.mustChime(t, "node", "rebuild", h.Name)
	}
	for _, id := range ids {
		host, _, _ := f.waitRunningOnOneHost(t, id, 3*time.Minute)
		if host == i {
			t.Fatalf("vm %s runs on the drained %s after the rebuild", id, h.Name)
		}
	}
	u.check(t)
}
