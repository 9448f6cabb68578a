package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"
)

// barrierGate holds every new leader's Raft barrier while closed, so that
// a test can see what a leader serves before it applied everything its
// predecessors committed.
type barrierGate struct {
	once    sync.Once
	mu      sync.Mutex
	hold    bool
	release chan struct{}
	waiting map[*raft.Raft]bool // leaders held at the gate now
}

func newBarrierGate() *barrierGate {
	return &barrierGate{release: make(chan struct{}), waiting: map[*raft.Raft]bool{}}
}

func (g *barrierGate) barrier(r *raft.Raft, timeout time.Duration) error {
	g.mu.Lock()
	hold := g.hold
	if hold {
		g.waiting[r] = true
	}
	g.mu.Unlock()
	if hold {
		<-g.release
	}
	return r.Barrier(timeout).Error()
}

// open lets every held barrier go on (once).
func (g *barrierGate) open() { g.once.Do(func() { close(g.release) }) }

func (g *barrierGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold = true
}

func (g *barrierGate) held(r *raft.Raft) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting[r]
}

// Uniqueness rule 11, second half: a server that has just become leader
// serves no agent its desired state before its barrier has passed (its
// state may lack a placement the previous leader committed); it answers
// 503, through a follower too, and the agent's client retries. After the
// barrier the same query answers, with every committed placement.
func TestNewLeaderServesDesiredStateOnlyAfterItsBarrier(t *testing.T) {
	gate := newBarrierGate()
	tc := newTestCluster(t, 3, func(c *Config) { c.barrier = gate.barrier })
	t.Cleanup(gate.open) // runs before the cluster's shutdown, which waits for held leaders
	first := tc.leader(30 * time.Second)
	ctx := context.Background()
	reg := registerNode(t, tc.client(first), "hv1")
	vm, err := tc.client(first).CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64})
	if err != nil {
		t.Fatal(err)
	}
	agentOf := func(i int) *api.Client {
		c := tc.client(i)
		c.Retries = 0 // see each answer; the agent's own client retries
		c.SetCredentials(reg.NodeID, reg.Secret)
		return c
	}
	if _, err := agentOf(first).Desired(ctx, api.QueryOptions{}); err != nil {
		t.Fatalf("desired state from the first leader: %v", err)
	}

	gate.close()
	tc.srv[first].Kill()
	tc.srv[first] = nil
	var next int
	wait.For(t, 30*time.Second, "a new leader held at its barrier", func() (bool, string) {
		for i, s := range tc.srv {
			if s != nil && s.IsLeader() && gate.held(s.raft) {
				next = i
				return true, ""
			}
		}
		return false, "no leader waiting at the barrier yet"
	})
	follower := 3 - first - next
	for _, via := range []int{next, follower} {
		_, err := agentOf(via).Desired(ctx, api.QueryOptions{})
		if !errors.Is(err, structs.ErrNoLeader) {
			t.Fatalf("desired state through %s before the new leader's barrier: %v, want a 503", tc.cfgs[via].Name, err)
		}
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 503 || ae.Field != "leader" {
			t.Fatalf("answer %#v, want status 503 naming the leader's barrier", err)
		}
	}
	// Once the barrier passed the same query answers (an agent's client,
	// which retries on 503, gets there on its own).
	gate.open()
	var ds *api.DesiredState
	wait.For(t, 30*time.Second, "desired state through the follower after the barrier", func() (bool, string) {
		var err error
		ds, err = agentOf(follower).Desired(ctx, api.QueryOptions{})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if len(ds.VMs) != 1 || ds.VMs[0].ID != vm.ID {
		t.Fatalf("desired state after the barrier lists %+v, want web (placed by the previous leader)", ds.VMs)
	}
	if !tc.srv[next].leaderReady() {
		t.Fatalf("%s answered but does not count itself ready", tc.cfgs[next].Name)
	}
}
