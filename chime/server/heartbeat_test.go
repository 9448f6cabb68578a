package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"

	"github.com/google/uuid"
	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
)

// simAgent heartbeats through a client until stopped; its ping endpoint
// answers while alive is true.
type simAgent struct {
	id, secret string
	alive      atomic.Bool
	stop       chan struct{}
	wg         sync.WaitGroup
}

// startSimAgent registers name through c and heartbeats every interval.
// Its ping endpoint is plaintext, or, with m (an agent certificate), TLS
// as a real agent's is when the servers run TLS.
func startSimAgent(t *testing.T, c *api.Client, m *tlsconf.Material, name string, every time.Duration) *simAgent {
	t.Helper()
	return startFakeAgent(t, c, m, name, every, false)
}

// startFakeAgent is startSimAgent; with runVMs its heartbeats list every
// desired-running VM of its desired state (not held, not migrating away)
// running at its generation, as an agent that runs them would.
func startFakeAgent(t *testing.T, c *api.Client, m *tlsconf.Material, name string, every time.Duration, runVMs bool) *simAgent {
	t.Helper()
	a := &simAgent{stop: make(chan struct{})}
	a.alive.Store(true)
	ping := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.alive.Load() {
			http.Error(w, "gone", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{}`)
	}))
	if m != nil {
		ping.TLS = m.ServerConfig(tlsconf.RoleServer)
		ping.StartTLS()
	} else {
		ping.Start()
	}
	t.Cleanup(ping.Close)
	reg, err := c.Register(context.Background(), api.RegisterRequest{ID: uuid.NewString(), Name: name,
		APIAddr: ping.Listener.Addr().String(), VCPUs: 8, MemoryMiB: 8192})
	if err != nil {
		t.Fatal(err)
	}
	a.id, a.secret = reg.NodeID, reg.Secret
	c.Node, c.Secret = a.id, a.secret
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-a.stop:
				return
			case <-t.C:
			}
			if a.alive.Load() {
				// As a real agent, it names the desired state it applied:
				// an unreachable node returns only with a current one.
				ctx, cancel := context.WithTimeout(context.Background(), every)
				var idx uint64
				obs := []structs.VMObservation{}
				if ds, err := c.Desired(ctx, api.QueryOptions{}); err == nil {
					idx = ds.Index
					for _, v := range ds.VMs {
						if runVMs && v.DesiredState == structs.DesiredRunning && !v.Held && v.Migrate == nil {
							obs = append(obs, structs.VMObservation{VMID: v.ID, State: structs.StateRunning, Reason: "booted", Generation: v.Generation})
						}
					}
				} else if runVMs {
					cancel()
					continue // without a desired state it reports nothing
				}
				c.Heartbeat(ctx, api.HeartbeatRequest{NodeID: a.id, VMs: obs, DesiredIndex: idx})
				cancel()
			}
		}
	}()
	t.Cleanup(func() { close(a.stop); a.wg.Wait() })
	return a
}

func TestSilentNodeBecomesUnreachableAndComesBack(t *testing.T) {
	interval, missed := 200*time.Millisecond, 3
	_, base := devServerWith(t, func(c *Config) { c.HeartbeatInterval, c.MissedHeartbeats = interval, missed })
	c := api.NewClient(base)
	a := startSimAgent(t, api.NewClient(base), nil, "hv1", interval)
	time.Sleep(3 * interval)
	a.alive.Store(false)
	silenced := time.Now()
	bound := 2 * (time.Duration(missed)*interval + interval) // 2 × (missed × interval + ping-back timeout)
	wait.For(t, bound+5*time.Second, "silent node unreachable", func() (bool, string) {
		n, err := c.GetNode(context.Background(), a.id)
		if err != nil || n.MonitorState != structs.MonitorUnreachable {
			return false, fmt.Sprintf("%+v %v", n.MonitorState, err)
		}
		return true, ""
	})
	took := time.Since(silenced)
	t.Logf("unreachable %s after silence (promise: %s × %d + ping-back)", took.Round(time.Millisecond), interval, missed)
	if took > bound {
		t.Fatalf("unreachable after %s, more than 2 × the promised %s", took, bound/2)
	}
	a.alive.Store(true)
	wait.For(t, 10*time.Second, "node normal again", func() (bool, string) {
		n, _ := c.GetNode(context.Background(), a.id)
		if n.MonitorState != structs.MonitorNormal {
			return false, n.MonitorState
		}
		return true, ""
	})
}

func TestLeaderChangeCausesNoFalseUnreachable(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(30 * time.Second)
	// Heartbeat interval 1 s, 3 missed: agents heartbeat through all servers.
	var agents []*simAgent
	for i := 0; i < 5; i++ {
		agents = append(agents, startSimAgent(t, tc.clientOf(tlsconf.RoleAgent, tc.urls()...), tc.agent, fmt.Sprintf("hv%d", i), time.Second))
	}
	time.Sleep(2 * time.Second)
	tc.srv[l].Kill()
	tc.srv[l] = nil
	nl := tc.leader(30 * time.Second)
	// Watch for 3 × the detection bound: no node may leave normal.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		nodes, err := tc.srv[nl].FSM().Nodes()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.MonitorState != structs.MonitorNormal {
				t.Fatalf("node %s left normal (%s) after a leader change", n.Name, n.MonitorState)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	ev, _ := tc.srv[nl].FSM().Events(0, 10000)
	for _, e := range ev {
		if e.Kind == "node.unreachable" {
			t.Fatalf("event %s: %s", e.Kind, e.Message)
		}
	}
	_ = agents
}

// TestHeartbeatIsOneRaftEntry: a heartbeat that changes observations,
// flags and the monitor state, and reports a node-local migration, is one
// node.heartbeat entry in the Raft log and nothing else of its kind; the
// same heartbeat again writes nothing.
func TestHeartbeatIsOneRaftEntry(t *testing.T) {
	s, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	reg := registerNode(t, c, "hv1")
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64})
	if err != nil {
		t.Fatal(err)
	}
	if vm.NodeID != reg.NodeID {
		t.Fatalf("vm placed on %q, want the only node", vm.NodeID)
	}
	agent := api.NewClient(base)
	agent.Node, agent.Secret = reg.NodeID, reg.Secret
	hb := api.HeartbeatRequest{NodeID: reg.NodeID, Faults: []string{"storage"}, LocalDrained: true, LocalDrainID: "d-1",
		VMs:        []structs.VMObservation{{VMID: vm.ID, State: structs.StateRunning, Reason: "booted", Generation: vm.Generation}},
		Migrations: []structs.LocalMigration{{VMID: vm.ID, ToAddr: "10.0.0.9:4660", Generation: vm.Generation}}}

	counts := func(send api.HeartbeatRequest) map[fsm.CommandType]int {
		t.Helper()
		before, err := s.logs.LastIndex()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Heartbeat(ctx, send); err != nil {
			t.Fatal(err)
		}
		after, err := s.logs.LastIndex()
		if err != nil {
			t.Fatal(err)
		}
		out := map[fsm.CommandType]int{}
		for i := before + 1; i <= after; i++ {
			var l raft.Log
			if err := s.logs.GetLog(i, &l); err != nil {
				t.Fatal(err)
			}
			if l.Type != raft.LogCommand {
				continue
			}
			var cmd fsm.Command
			if err := json.Unmarshal(l.Data, &cmd); err != nil {
				t.Fatal(err)
			}
			var about struct {
				NodeID string `json:"node_id"`
			}
			_ = json.Unmarshal(cmd.Payload, &about)
			if about.NodeID == reg.NodeID {
				out[cmd.Type]++
			}
		}
		return out
	}
	if got := counts(hb); !reflect.DeepEqual(got, map[fsm.CommandType]int{fsm.CmdHeartbeat: 1}) {
		t.Fatalf("the heartbeat wrote %v, want exactly one %s entry", got, fsm.CmdHeartbeat)
	}
	n, _ := s.fsm.Node(reg.NodeID)
	got, _ := s.fsm.VM(vm.ID)
	// The heartbeat claims a local drain while it lists a VM running: the
	// claim is recorded as draining, not as evidence (uniqueness rule 6).
	if n.MonitorState != structs.MonitorError || n.LocalDrained || n.LocalDrainState != structs.LocalDraining || n.LocalDrainID != "d-1" || got.State != structs.StateRunning {
		t.Fatalf("after the heartbeat: node %s local_drained %v local_drain_state %q local_drain_id %q, vm %s",
			n.MonitorState, n.LocalDrained, n.LocalDrainState, n.LocalDrainID, got.State)
	}
	hb.Migrations = nil // acknowledged by the answer
	if got := counts(hb); len(got) != 0 {
		t.Fatalf("an unchanged heartbeat wrote %v, want nothing", got)
	}
	ev, _ := s.fsm.Events(0, 1000)
	found := false
	for _, e := range ev {
		if e.Kind == "vm.local_migration" && e.VMID == vm.ID {
			found = true
		}
	}
	if !found {
		t.Fatalf("no vm.local_migration event recorded")
	}
}
