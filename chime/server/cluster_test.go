package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
)

// testCluster is n in-process servers on mutual TLS and with ACLs, as
// production runs them: a CA of the test's own (tlsconftest), a server
// certificate per server, a cli and an agent certificate for the test's
// clients, and the management token of the ACL bootstrap.
type testCluster struct {
	t     testing.TB
	cfgs  []Config
	srv   []*Server
	pki   *testPKI
	cli   *tlsconf.Material // the test's operator certificate
	agent *tlsconf.Material // the test's fake agents' certificate
	token string            // the management token (bootstrapACL), "" with ACLs off
}

// testGossipKey is the test clusters' gossip key (32 bytes).
const testGossipKey = "c2VjcmV0LWdvc3NpcC1rZXktb2YtdGVzdC1jbHVzdGU="

func newTestCluster(t testing.TB, n int, tweak ...func(*Config)) *testCluster {
	t.Helper()
	ports := ports.Free(t, "127.0.0.1", 3*n)
	p := newTestPKI(t)
	tc := &testCluster{t: t, pki: p, cli: p.material("tc-cli", tlsconf.RoleCLI, false),
		agent: p.material("tc-agent", tlsconf.RoleAgent, false)}
	var joins []string
	for i := 0; i < n; i++ {
		joins = append(joins, fmt.Sprintf("127.0.0.1:%d", ports[3*i+2]))
	}
	for i := 0; i < n; i++ {
		cfg := DefaultConfig()
		cfg.Name = fmt.Sprintf("s%d", i+1)
		cfg.DataDir = filepath.Join(t.TempDir(), cfg.Name)
		cfg.APIPort, cfg.RaftPort, cfg.GossipPort = ports[3*i], ports[3*i+1], ports[3*i+2]
		cfg.BootstrapExpect = n
		cfg.Join = joins
		cfg.GossipProfile = "local"
		cfg.RaftTimeScale = 0.25
		cfg.HeartbeatInterval = time.Second
		cfg.GossipKey = testGossipKey
		cfg.TLS = p.files(cfg.Name+"-server", tlsconf.RoleServer, false)
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: cfg.Name, Level: hclog.Warn})
		for _, fn := range tweak {
			fn(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
	}
	tc.srv = make([]*Server, n)
	for i := range tc.cfgs {
		tc.start(i)
	}
	t.Cleanup(func() {
		for _, s := range tc.srv {
			if s != nil {
				s.Shutdown()
			}
		}
	})
	tc.bootstrapACL()
	return tc
}

// bootstrapACL bootstraps the cluster's ACLs (they are on outside --dev)
// once a leader is elected, and keeps the management token for client.
func (tc *testCluster) bootstrapACL() {
	tc.t.Helper()
	if tc.cfgs[0].ACL == ACLOff {
		return
	}
	tc.leader(30 * time.Second)
	tc.token = bootstrapToken(tc.t, tc.clientOf(tlsconf.RoleCLI, tc.urls()...))
}

// bootstrapToken runs the ACL bootstrap through c and returns the
// management token's secret.
func bootstrapToken(t testing.TB, c *api.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		tok, err := c.ACLBootstrap(ctx)
		if err == nil {
			return tok.SecretID
		}
		if ctx.Err() != nil || !errors.Is(err, structs.ErrNoLeader) {
			t.Fatalf("acl bootstrap: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	s, err := Start(context.Background(), tc.cfgs[i])
	if err != nil {
		tc.t.Fatalf("start %s: %v", tc.cfgs[i].Name, err)
	}
	tc.srv[i] = s
}

// client is an operator's client of server i (cli certificate, management
// token).
func (tc *testCluster) client(i int) *api.Client {
	return tc.clientOf(tlsconf.RoleCLI, tc.cfgs[i].APIURL())
}

// urls are every server's API URL.
func (tc *testCluster) urls() []string {
	var out []string
	for _, c := range tc.cfgs {
		out = append(out, c.APIURL())
	}
	return out
}

// clientOf is a client of urls with the test's certificate of role (cli
// or agent). A cli client carries the management token (once
// bootstrapped); an agent client none: its agent certificate is the join
// credential, and a registered node authenticates with its secret.
func (tc *testCluster) clientOf(role tlsconf.Role, urls ...string) *api.Client {
	m := tc.cli
	if role == tlsconf.RoleAgent {
		m = tc.agent
	}
	c := api.NewClient(urls...)
	c.UseTLS(m.ClientConfig(tlsconf.RoleServer))
	if role == tlsconf.RoleCLI {
		c.Token = tc.token
	}
	return c
}

// leader waits for a leader among the running servers and returns its index.
func (tc *testCluster) leader(timeout time.Duration) int {
	tc.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for i, s := range tc.srv {
			if s != nil && s.IsLeader() {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatalf("no leader within %s", timeout)
	return -1
}

func registerNode(t testing.TB, c *api.Client, name string) *api.RegisterResponse {
	t.Helper()
	r, err := c.Register(context.Background(), api.RegisterRequest{ID: uuid.NewString(), Name: name, APIAddr: "127.0.0.1:1",
		VCPUs: 64, MemoryMiB: 1 << 20})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return r
}

func TestThreeServerCluster(t *testing.T) {
	tc := newTestCluster(t, 3)
	start := time.Now()
	l := tc.leader(30 * time.Second)
	t.Logf("leader %s elected %s after start", tc.cfgs[l].Name, time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	registerNode(t, tc.client(0), "hv1")

	// Writes through every server (followers forward to the leader).
	var acked []string
	for i := 0; i < 30; i++ {
		vm, err := tc.client(i%3).CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("vm-%d", i), VCPUs: 1, Memory: 64})
		if err != nil {
			t.Fatalf("create through %s: %v", tc.cfgs[i%3].Name, err)
		}
		if vm.NodeID == "" {
			t.Fatalf("vm %s not placed though a node has room", vm.Name)
		}
		acked = append(acked, vm.ID)
	}

	// Kill the leader; keep writing meanwhile and count only acknowledged writes.
	killed := l
	killAt := time.Now()
	tc.srv[killed].Kill()
	tc.srv[killed] = nil
	survivor := (killed + 1) % 3
	var mu sync.Mutex
	var failures int
	var firstOK time.Duration
	for i := 30; i < 60; i++ {
		var vm *structs.VM
		var err error
		for attempt := 0; attempt < 100; attempt++ {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			vm, err = tc.client(survivor).CreateVM(cctx, api.CreateVMRequest{Name: fmt.Sprintf("vm-%d", i), VCPUs: 1, Memory: 64})
			cancel()
			if err == nil || errors.Is(err, structs.ErrConflict) {
				break
			}
			mu.Lock()
			failures++
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
		if errors.Is(err, structs.ErrConflict) {
			// The write applied but its answer was lost; it must be there.
			got, gerr := tc.client(survivor).GetVM(ctx, fmt.Sprintf("vm-%d", i))
			if gerr != nil {
				t.Fatalf("vm-%d: conflict on retry but not found: %v", i, gerr)
			}
			vm, err = got, nil
		}
		if err != nil {
			t.Fatalf("write after leader kill never succeeded: %v", err)
		}
		if firstOK == 0 {
			firstOK = time.Since(killAt)
		}
		acked = append(acked, vm.ID)
	}
	nl := tc.leader(30 * time.Second)
	t.Logf("leader failover: %s → %s; first write acknowledged %s after the kill (%d failed attempts meanwhile)",
		tc.cfgs[killed].Name, tc.cfgs[nl].Name, firstOK.Round(time.Millisecond), failures)

	// No acknowledged write lost, on every survivor (linearizable reads).
	for i, s := range tc.srv {
		if s == nil {
			continue
		}
		wait.For(t, 10*time.Second, "every acknowledged VM readable on each server", func() (bool, string) {
			vms, _, err := tc.client(i).ListVMs(ctx, api.QueryOptions{Consistent: true})
			if err != nil {
				return false, err.Error()
			}
			have := map[string]bool{}
			for _, v := range vms {
				have[v.ID] = true
			}
			for _, id := range acked {
				if !have[id] {
					return false, fmt.Sprintf("%s misses acknowledged vm %s (%d listed)", tc.cfgs[i].Name, id, len(vms))
				}
			}
			return true, ""
		})
	}

	// Restart the killed server from its data dir: it catches up.
	tc.start(killed)
	want := tc.srv[nl].FSM().Index()
	wait.For(t, 30*time.Second, "restarted server caught up", func() (bool, string) {
		got := tc.srv[killed].FSM().Index()
		if got < want {
			return false, fmt.Sprintf("restarted %s at index %d, leader at %d", tc.cfgs[killed].Name, got, want)
		}
		vms, err := tc.srv[killed].FSM().VMs()
		if err != nil || len(vms) != len(acked) {
			return false, fmt.Sprintf("restarted server lists %d VMs, want %d (%v)", len(vms), len(acked), err)
		}
		return true, ""
	})
	// And it serves writes again (forwarding).
	if _, err := tc.client(killed).CreateVM(ctx, api.CreateVMRequest{Name: "after-restart", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatalf("write through the restarted server: %v", err)
	}
}
