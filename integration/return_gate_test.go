package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// TestHealAfterConfirmedRebuild checks uniqueness rule 9 on real libvirt
// (issue 11, root cause 7: the servers gate the return). A node's
// management link is cut while its VMs keep running; the operator drains
// it and rebuilds it with --confirm-fenced although it still runs them (a
// lie: the uniqueness checker excuses the copies on that host, and only
// those, until the heal corrects it). When the link comes back, the node
// must never show `normal` while a stale copy runs there: a sampler reads
// the node's monitor state from the leader and then the host's qemu
// processes, every few tens of milliseconds, from before the heal until
// the node is back. The stale copies are destroyed, the servers record
// the uniqueness conflict, and afterwards no VM runs twice.
func TestHealAfterConfirmedRebuild(t *testing.T) {
	f := newFleet(t)
	u := startUniquenessChecker(t, f.lab.Hosts)
	i, on := f.busiestHost(t, "heal", 4, 90*time.Second)
	h, ids := f.lab.Hosts[i], on[i]
	t.Logf("victim %s runs %d VMs: %v", h.Name, len(ids), ids)
	seq := f.lastEventSeq(t)

	setMgmt := func(up bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.SetLink(ctx, lab.NetMgmt, up); err != nil {
			t.Fatal(err)
		}
	}
	setMgmt(false)
	t.Cleanup(func() { _ = h.SetLink(context.Background(), lab.NetMgmt, true) })
	t0 := time.Now()
	f.waitMonitor(t, h.Name, structs.MonitorUnreachable, t0, 2*time.Minute)
	f.mustChime(t, "node", "drain", h.Name)
	corrected := u.recordLie(h.Name, ids)
	f.mustChime(t, "node", "rebuild", h.Name, "--confirm-fenced")

	// The lie holds: every VM of the victim runs on another host too, and
	// still on the victim (its management link is down, nothing told it).
	wait.For(t, 2*time.Minute, "the rebuilt VMs run elsewhere while their stale copies run on "+h.Name, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, id := range ids {
			hosts, err := f.where(ctx, id)
			if err != nil {
				return false, err.Error()
			}
			if len(hosts) != 2 || !containsString(hosts, h.Name) {
				return false, fmt.Sprintf("vm %s runs on %v", id, hosts)
			}
		}
		return true, ""
	})

	s := startReturnSampler(t, f, h, ids)
	time.Sleep(time.Second) // samples of the unreachable node with its stale copies
	tHeal := time.Now()
	setMgmt(true)
	s.healed.Store(true)
	wait.For(t, 2*time.Minute, "node "+h.Name+" back (normal, drained) and its stale copies gone", func() (bool, string) {
		var n structs.Node
		if err := f.chimeJSON(&n, "node", "show", h.Name); err != nil {
			return false, err.Error()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, id := range ids {
			if _, ok := procs[id]; ok {
				left = append(left, id)
			}
		}
		return n.MonitorState == structs.MonitorNormal && n.ManagementState == structs.NodeDrained && len(left) == 0,
			fmt.Sprintf("%s/%s faults %v return_refused %q stale copies running %v", n.ManagementState, n.MonitorState, n.Faults, n.ReturnRefused, left)
	})
	back := time.Since(tHeal)
	time.Sleep(2 * time.Second) // samples of the returned node
	st := s.stop()
	excused := corrected()
	t.Logf("heal → normal with every stale copy gone: %s", back.Round(100*time.Millisecond))
	t.Logf("return sampler: %d samples (%d normal, %d unreachable, %d other); %d samples saw a stale copy running (%d after the heal); %d failed",
		st.samples, st.normal, st.unreachable, st.other, st.staleSeen, st.staleAfterHeal, st.failed)
	t.Logf("uniqueness checker: %d duplicate observations excused by the --confirm-fenced lie (copies on %s)", len(excused), h.Name)
	if len(st.violations) > 0 {
		t.Errorf("node %s shown normal while a stale copy ran there (%d samples):\n%s", h.Name, len(st.violations), strings.Join(st.violations, "\n"))
	}
	if st.staleSeen == 0 || st.normal == 0 {
		t.Fatalf("the sampler never saw a stale copy running (%d) or the node normal (%d): the test proved nothing", st.staleSeen, st.normal)
	}
	if len(excused) == 0 {
		t.Fatal("the uniqueness checker never saw the lie's duplicates: the rebuild did not run the VMs twice, the test proved nothing")
	}
	t.Logf("conflict recorded: %s", f.eventSince(t, "vm.uniqueness_conflict", h.Name, seq))

	// Nothing of the rebuilt VMs comes back on the drained node, and each
	// runs exactly once; enable starts nothing there.
	for _, id := range ids {
		if hi, _, _ := f.waitRunningOnOneHost(t, id, time.Minute); hi == i {
			t.Fatalf("vm %s runs on the rebuilt node %s", id, h.Name)
		}
	}
	f.mustChime(t, "node", "enable", h.Name)
	holdFor(t, 5*time.Second, "nothing starts on "+h.Name+" after enable", func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		procs, err := h.QemuProcesses(ctx)
		if err != nil {
			return err.Error()
		}
		for _, id := range ids {
			if _, ok := procs[id]; ok {
				return "vm " + id + " runs there again"
			}
		}
		return ""
	})
	u.check(t)
}

// returnSampler samples, until stop, the victim's monitor state on the
// leader and then the host's qemu processes, and records every sample in
// which the node was normal while a copy of one of the rebuilt VMs ran.
// The order makes the check sound: a stale copy is never started again, so
// one seen running after a normal state ran while the node was normal.
type returnSampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	healed atomic.Bool // the management link is up again
	leader int         // the server last found leader (-1: find it)

	mu sync.Mutex
	returnStats
}

type returnStats struct {
	samples, normal, unreachable, other, failed int
	staleSeen, staleAfterHeal                   int
	violations                                  []string
}

func startReturnSampler(t *testing.T, f *fleet, h *lab.Host, ids []string) *returnSampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &returnSampler{cancel: cancel, done: make(chan struct{}), leader: -1}
	nodes, err := f.nodesByName()
	if err != nil {
		t.Fatal(err)
	}
	nodeID := nodes[h.Name].ID
	start := time.Now()
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			s.sample(ctx, f, h, nodeID, ids, start)
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *returnSampler) sample(ctx context.Context, f *fleet, h *lab.Host, nodeID string, ids []string, start time.Time) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if s.leader < 0 {
		leader, ok := f.runningLeader()
		if !ok {
			s.note(func(st *returnStats) { st.failed++ })
			return
		}
		s.leader = leader
	}
	n, err := f.apiClient(s.leader).GetNode(cctx, nodeID)
	if err != nil {
		s.leader = -1
		s.note(func(st *returnStats) { st.failed++ })
		return
	}
	procs, err := h.QemuProcesses(cctx)
	if err != nil {
		s.note(func(st *returnStats) { st.failed++ })
		return
	}
	var stale []string
	for _, id := range ids {
		if _, ok := procs[id]; ok {
			stale = append(stale, id)
		}
	}
	linkUp := s.healed.Load()
	s.note(func(st *returnStats) {
		st.samples++
		switch n.MonitorState {
		case structs.MonitorNormal:
			st.normal++
		case structs.MonitorUnreachable:
			st.unreachable++
		default:
			st.other++
		}
		if len(stale) > 0 {
			st.staleSeen++
			if linkUp {
				st.staleAfterHeal++
			}
			if n.MonitorState == structs.MonitorNormal {
				st.violations = append(st.violations, fmt.Sprintf("+%s node normal (faults %v), stale copies running %v",
					time.Since(start).Round(time.Millisecond), n.Faults, stale))
			}
		}
	})
}

func (s *returnSampler) note(fn func(*returnStats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.returnStats)
}

// stop ends the sampling and returns what it saw.
func (s *returnSampler) stop() returnStats {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.returnStats
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
