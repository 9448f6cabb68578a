package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// Read-your-writes with the real binary (docs/api.md#read-your-writes):
// `chime vm create` through a follower, then at once `chime vm list` on
// the same follower lists the VM, 50 times.
func TestReadYourWritesCLIThroughFollower(t *testing.T) {
	const rounds = 50
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ss := newServerSet(t, "127.0.0.1")
	l := ss.leader(60 * time.Second)
	ss.bootstrapACL()
	if _, err := ss.tls.agentClient(ss.addr(l)).Register(ctx, api.RegisterRequest{ID: "5b0c4a7e-2f1d-4c3b-9a8e-7d6c5b4a3f2e",
		Name: "hv-ryw", APIAddr: "127.0.0.1:1", VCPUs: 512, MemoryMiB: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var followers []int
	for i := range ss.names {
		if i != l {
			followers = append(followers, i)
		}
	}
	var cliLat []time.Duration
	for i := 0; i < rounds; i++ {
		f := followers[i%len(followers)]
		name := fmt.Sprintf("ryw-%02d", i)
		var vm structs.VM
		start := time.Now()
		if err := ss.cliJSON(ctx, f, &vm, "vm", "create", name, "--vcpus", "1", "--memory", "64"); err != nil {
			t.Fatalf("round %d: create through follower %s: %v", i, ss.names[f], err)
		}
		cliLat = append(cliLat, time.Since(start))
		var vms []structs.VM
		if err := ss.cliJSON(ctx, f, &vms, "vm", "list"); err != nil {
			t.Fatalf("round %d: list on follower %s: %v", i, ss.names[f], err)
		}
		if !slices.ContainsFunc(vms, func(v structs.VM) bool { return v.ID == vm.ID }) {
			t.Fatalf("round %d: %s (%s), created through %s, missing from its next `chime vm list` (%d VMs)",
				i, name, vm.ID, ss.names[f], len(vms))
		}
	}
	// How the followers' waits ended, from their metrics.
	waits := map[string]int{}
	for _, f := range followers {
		var buf bytes.Buffer
		if _, err := ss.client(f).Do(ctx, http.MethodGet, "/metrics", nil, nil, &buf); err != nil {
			t.Fatalf("metrics of %s: %v", ss.names[f], err)
		}
		for _, m := range forwardWaitRe.FindAllStringSubmatch(buf.String(), -1) {
			n, _ := strconv.ParseFloat(m[2], 64)
			waits[m[1]] += int(n)
		}
	}
	if waits["timeout"] != 0 {
		t.Errorf("%d forwarded writes were answered after the wait ran out", waits["timeout"])
	}
	if got := waits["caught_up"] + waits["waited"]; got < rounds {
		t.Errorf("the followers counted %d forwarded writes, want at least %d (%v)", got, rounds, waits)
	}
	t.Logf("%d rounds `chime vm create` through a follower then `chime vm list` on it: present every time; follower waits: %v; create %s",
		rounds, waits, percentiles(cliLat))

	// What the hold costs: API creates (no process start) through a
	// follower, each then read on it, against creates on the leader.
	apiCreate := func(i int, name string) time.Duration {
		var vm structs.VM
		start := time.Now()
		if _, err := ss.client(i).Do(ctx, http.MethodPost, "/v1/vms", nil, api.CreateVMRequest{Name: name, VCPUs: 1, Memory: 64}, &vm); err != nil {
			t.Fatalf("create %s through %s: %v", name, ss.names[i], err)
		}
		d := time.Since(start)
		if vms, _, err := ss.client(i).ListVMs(ctx, api.QueryOptions{}); err != nil || !slices.ContainsFunc(vms, func(v structs.VM) bool { return v.ID == vm.ID }) {
			t.Fatalf("%s, created through %s, missing from its next list (%v)", name, ss.names[i], err)
		}
		return d
	}
	var viaFollower, viaLeader []time.Duration
	for i := 0; i < rounds; i++ {
		viaFollower = append(viaFollower, apiCreate(followers[i%len(followers)], fmt.Sprintf("ryw-f-%02d", i)))
		viaLeader = append(viaLeader, apiCreate(l, fmt.Sprintf("ryw-l-%02d", i)))
	}
	t.Logf("API create, %d each (then a list on the same server, not timed): through a follower %s; on the leader %s",
		rounds, percentiles(viaFollower), percentiles(viaLeader))

	// A write no other write follows (a VM's priority: the create's
	// placement is a second entry, whose append tells the followers the
	// create is committed; a priority change has none).
	apiModify := func(i int, id, prio string) time.Duration {
		start := time.Now()
		idx, err := ss.client(i).Do(ctx, http.MethodPatch, "/v1/vms/"+id, nil, api.ModifyVMRequest{Priority: &prio}, nil)
		if err != nil {
			t.Fatalf("modify %s through %s: %v", id, ss.names[i], err)
		}
		d := time.Since(start)
		if vm, err := ss.client(i).GetVM(ctx, id); err != nil || vm.Spec.Priority != prio || vm.ModifyIndex > idx {
			t.Fatalf("%s, modified through %s at index %d, reads back as %+v (%v)", id, ss.names[i], idx, vm, err)
		}
		return d
	}
	var vms []structs.VM
	if err := ss.cliJSON(ctx, l, &vms, "vm", "list"); err != nil {
		t.Fatal(err)
	}
	viaFollower, viaLeader = viaFollower[:0], viaLeader[:0]
	prios := []string{structs.PriorityHigh, structs.PriorityLow}
	for i := 0; i < rounds; i++ {
		viaFollower = append(viaFollower, apiModify(followers[i%len(followers)], vms[i].ID, prios[i%2]))
		viaLeader = append(viaLeader, apiModify(l, vms[i].ID, prios[(i+1)%2]))
		time.Sleep(20 * time.Millisecond) // idle between writes, as an operator's
	}
	t.Logf("API priority change, %d each (then a read on the same server, not timed): through a follower %s; on the leader %s",
		rounds, percentiles(viaFollower), percentiles(viaLeader))
}

// percentiles formats p50, p90 and max of ds (sorted in place).
func percentiles(ds []time.Duration) string {
	slices.Sort(ds)
	at := func(q float64) time.Duration {
		return ds[min(len(ds)-1, int(q*float64(len(ds))))].Round(100 * time.Microsecond)
	}
	return fmt.Sprintf("p50 %v p90 %v max %v", at(0.5), at(0.9), ds[len(ds)-1].Round(100*time.Microsecond))
}

var forwardWaitRe = regexp.MustCompile(`(?m)^chime_forward_apply_wait_total\{result="([a-z_]+)"\} ([0-9.e+]+)$`)
