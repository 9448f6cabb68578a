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
	for i := 0; i < rounds; i++ {
		f := followers[i%len(followers)]
		name := fmt.Sprintf("ryw-%02d", i)
		var vm structs.VM
		if err := ss.cliJSON(ctx, f, &vm, "vm", "create", name, "--vcpus", "1", "--memory", "64"); err != nil {
			t.Fatalf("round %d: create through follower %s: %v", i, ss.names[f], err)
		}
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
	t.Logf("%d rounds `chime vm create` through a follower then `chime vm list` on it: present every time; follower waits: %v",
		rounds, waits)
}

var forwardWaitRe = regexp.MustCompile(`(?m)^chime_forward_apply_wait_total\{result="([a-z_]+)"\} ([0-9.e+]+)$`)
