package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
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
