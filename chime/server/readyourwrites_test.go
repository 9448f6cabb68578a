package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Read-your-writes (docs/api.md#read-your-writes): a VM created through a
// follower is in that follower's very next list, every time. The follower
// forwards the create to the leader and answers only once its own FSM has
// applied the index the leader's answer carries.
func TestReadYourWritesThroughFollower(t *testing.T) {
	const rounds = 60
	tc := newTestCluster(t, 3)
	l := tc.leader(30 * time.Second)
	ctx := context.Background()
	registerNode(t, tc.client(l), "hv1")
	var followers []int
	for i := range tc.srv {
		if i != l {
			followers = append(followers, i)
		}
	}
	waited := func() (n int) { // forwarded writes the followers had to wait for, so far
		for _, f := range followers {
			n += int(counterValue(tc.srv[f].met.forwardWait.WithLabelValues(waitWaited)))
		}
		return n
	}
	before := waited()
	var lat []time.Duration
	for i := 0; i < rounds; i++ {
		f := followers[i%len(followers)]
		c := tc.client(f)
		var vm structs.VM
		start := time.Now()
		idx, err := c.Do(ctx, http.MethodPost, "/v1/vms", nil,
			api.CreateVMRequest{Name: fmt.Sprintf("ryw-%d", i), VCPUs: 1, Memory: 64}, &vm)
		lat = append(lat, time.Since(start))
		if err != nil {
			t.Fatalf("round %d: create through follower %s: %v", i, tc.cfgs[f].Name, err)
		}
		if idx == 0 {
			t.Fatalf("round %d: the create's answer carries no %s", i, api.HeaderIndex)
		}
		vms, listIdx, err := c.ListVMs(ctx, api.QueryOptions{})
		if err != nil {
			t.Fatalf("round %d: list on follower %s: %v", i, tc.cfgs[f].Name, err)
		}
		if !slices.ContainsFunc(vms, func(v structs.VM) bool { return v.ID == vm.ID }) {
			t.Fatalf("round %d: vm %s (%s, written at index %d) missing from the next list on follower %s (%d VMs, list index %d)",
				i, vm.Name, vm.ID, idx, tc.cfgs[f].Name, len(vms), listIdx)
		}
		if listIdx < idx {
			t.Fatalf("round %d: list on %s answered at index %d, before the write's %d", i, tc.cfgs[f].Name, listIdx, idx)
		}
	}
	behind := waited() - before // rounds in which the follower had not applied the write when the leader answered
	for _, f := range followers {
		if n := counterValue(tc.srv[f].met.forwardWait.WithLabelValues(waitTimeout)); n != 0 {
			t.Errorf("follower %s: %v forwarded writes answered after the wait ran out", tc.cfgs[f].Name, n)
		}
	}
	slices.Sort(lat)
	t.Logf("%d rounds create-through-follower then list on it: VM present every time; the follower waited for its FSM in %d of them; create latency median %v, max %v",
		rounds, behind, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
}

// A follower whose FSM cannot reach the write's index answers at the end
// of the bound, and counts the timeout.
func TestAwaitAppliedTimesOut(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(30 * time.Second)
	f := (l + 1) % 3
	s := tc.srv[f]
	now := s.FSM().Index()
	start := time.Now()
	applied, ok := s.awaitApplied(context.Background(), now, 200*time.Millisecond)
	if !ok || applied < now || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("index %d already applied: awaitApplied = %d, %v after %v; want at once", now, applied, ok, time.Since(start))
	}
	start = time.Now()
	applied, ok = s.awaitApplied(context.Background(), now+1_000_000, 200*time.Millisecond)
	took := time.Since(start)
	if ok {
		t.Fatalf("index %d reached (applied %d)? want a timeout", now+1_000_000, applied)
	}
	if took < 200*time.Millisecond || took > 5*time.Second {
		t.Fatalf("awaitApplied gave up after %v, want about 200ms", took)
	}
	t.Logf("awaitApplied on %s: gave up after %v at applied index %d", tc.cfgs[f].Name, took.Round(time.Millisecond), applied)
}

// TestFollowerAppliesPromptly measures the hold's cause on an idle cluster
// with production Raft timers: how long after the leader applied a write
// (a lone entry: no audit record or other write follows it) the followers
// have applied it too. A follower learns that an entry is committed from
// the leader's next AppendEntries; when no write follows, that is the one
// sent after Raft's CommitTimeout without an append.
func TestFollowerAppliesPromptly(t *testing.T) {
	const rounds = 40
	tc := newTestCluster(t, 3, func(c *Config) { c.RaftTimeScale = 1 })
	l := tc.leader(60 * time.Second)
	ctx := context.Background()
	var lag []time.Duration
	for i := 0; i < rounds; i++ {
		time.Sleep(30 * time.Millisecond) // idle between writes
		ev := structs.Event{Kind: "test.lag", Message: fmt.Sprintf("round %d", i)}
		if _, err := tc.srv[l].propose(ctx, "", fsm.CmdEvent, fsm.AppendEvent{Event: ev}); err != nil {
			t.Fatalf("round %d: propose: %v", i, err)
		}
		idx, applied := tc.srv[l].FSM().Index(), time.Now()
		for f := range tc.srv {
			if f == l {
				continue
			}
			if got, ok := tc.srv[f].awaitApplied(ctx, idx, 5*time.Second); !ok {
				t.Fatalf("round %d: follower %s at index %d after 5s, want %d", i, tc.cfgs[f].Name, got, idx)
			}
			lag = append(lag, time.Since(applied)) // the second follower's includes the first's
		}
	}
	// What the idle replication costs: this process's CPU (the three
	// servers) over 3 s without a write.
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	c0 := cpu()
	time.Sleep(3 * time.Second)
	idle := (cpu() - c0) / 3
	slices.Sort(lag)
	p50, p90 := lag[len(lag)/2], lag[len(lag)*9/10]
	t.Logf("idle: the 3 servers use %v CPU per second", idle.Round(100*time.Microsecond))
	t.Logf("%d lone writes: the followers applied them p50 %v p90 %v max %v after the leader (Raft CommitTimeout %v)",
		rounds, p50.Round(100*time.Microsecond), p90.Round(100*time.Microsecond), lag[len(lag)-1].Round(100*time.Microsecond), raftCommitTimeout)
	if p50 > 40*time.Millisecond {
		t.Errorf("followers applied a lone write p50 %v after the leader, want under 40ms", p50)
	}
}
