package server

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
)

// Many concurrent creates against a real 3-server cluster, through the
// leader and the followers, for far more than the nodes hold: no node ends
// up over its capacity (creates decide concurrently; the FSM's capacity
// compare-and-set refuses the losers, which decide again), every create
// is answered (placed, pending, or a 409 after its retries), and every
// replica's derived view equals what its state says.
func TestConcurrentCreatesNeverOvercommit(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(30 * time.Second)
	ctx := context.Background()
	const nodeVCPUs, nodeMiB = 8, 4096
	for i := 0; i < 3; i++ {
		if _, err := tc.client(l).Register(ctx, api.RegisterRequest{ID: uuid.NewString(), Name: fmt.Sprintf("hv%d", i+1),
			APIAddr: "127.0.0.1:1", VCPUs: nodeVCPUs, MemoryMiB: nodeMiB}); err != nil {
			t.Fatalf("register: %v", err)
		}
	}
	const clients, each = 32, 4 // 128 creates of 1 vCPU for 24 vCPUs
	var mu sync.Mutex
	placed, pending, lost := 0, 0, 0
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			cl := tc.clientOf(tlsconf.RoleCLI, tc.cfgs[c%3].APIURL())
			for i := 0; i < each; i++ {
				vm, err := cl.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("race-%d-%d", c, i), VCPUs: 1, Memory: 256})
				mu.Lock()
				switch {
				case err == nil && vm.NodeID != "":
					placed++
				case err == nil:
					pending++
				case errors.Is(err, structs.ErrConflict):
					lost++
				default:
					mu.Unlock()
					t.Errorf("create: %v", err)
					return
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	t.Logf("%d creates: %d placed, %d pending, %d refused (lost every race)", clients*each, placed, pending, lost)
	if placed == 0 || placed > 3*nodeVCPUs {
		t.Fatalf("%d placed, want 1..%d", placed, 3*nodeVCPUs)
	}
	// The pending loop may place more later; let it settle, then judge the
	// final state on every replica.
	time.Sleep(time.Second)
	want := tc.srv[l].FSM().Index()
	for i, s := range tc.srv {
		f := s.FSM()
		deadline := time.Now().Add(10 * time.Second)
		for f.Index() < want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		vms, err := f.VMs()
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := f.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		used := map[string][2]int{}
		for _, v := range vms {
			if v.NodeID != "" {
				u := used[v.NodeID]
				used[v.NodeID] = [2]int{u[0] + v.Spec.VCPUs, u[1] + v.Spec.MemoryMiB}
			}
		}
		total := 0
		for _, n := range nodes {
			u := used[n.ID]
			total += u[0]
			if u[0] > n.VCPUs || u[1] > n.MemoryMiB {
				t.Fatalf("%s: node %s overcommitted: %d/%d vCPUs, %d/%d MiB", tc.cfgs[i].Name, n.Name, u[0], n.VCPUs, u[1], n.MemoryMiB)
			}
		}
		if total != 3*nodeVCPUs {
			t.Errorf("%s: %d vCPUs placed in the end, want every one of %d taken (the rest pending)", tc.cfgs[i].Name, total, 3*nodeVCPUs)
		}
		_, view := f.Placement()
		for _, n := range nodes {
			if got := view[n.ID]; got.VCPUs != int64(used[n.ID][0]) || got.MemoryMiB != int64(used[n.ID][1]) {
				t.Fatalf("%s: derived view of node %s says %d vCPUs %d MiB, state says %v", tc.cfgs[i].Name, n.Name, got.VCPUs, got.MemoryMiB, used[n.ID])
			}
		}
		if i > 0 {
			_, first := tc.srv[0].FSM().Placement()
			if !reflect.DeepEqual(first, view) {
				t.Fatalf("replicas' views differ: %v / %v", first, view)
			}
		}
	}
}
