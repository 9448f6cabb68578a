package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
)

func TestSilentFor(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name              string
		now, last, leader time.Time
		want              time.Duration
	}{
		{"heartbeat after election", base.Add(10 * time.Second), base.Add(8 * time.Second), base, 2 * time.Second},
		{"never heard since election: grace from election", base.Add(10 * time.Second), time.Time{}, base.Add(7 * time.Second), 3 * time.Second},
		{"old heartbeat from before the election does not count against the node", base.Add(10 * time.Second), base, base.Add(9 * time.Second), time.Second},
	}
	for _, tt := range tests {
		if got := silentFor(tt.now, tt.last, tt.leader); got != tt.want {
			t.Errorf("%s: silentFor = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestStateFromHeartbeat(t *testing.T) {
	if stateFromHeartbeat(nil) != structs.MonitorNormal || stateFromHeartbeat([]string{"x"}) != structs.MonitorError {
		t.Fatal("faults must mean error, none normal")
	}
}

// simAgent heartbeats through a client until stopped; its ping endpoint
// answers while alive is true.
type simAgent struct {
	id, secret string
	alive      atomic.Bool
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startSimAgent(t *testing.T, base []string, name string, every time.Duration) *simAgent {
	t.Helper()
	a := &simAgent{stop: make(chan struct{})}
	a.alive.Store(true)
	ping := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.alive.Load() {
			http.Error(w, "gone", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{}`)
	}))
	t.Cleanup(ping.Close)
	c := api.NewClient(base...)
	reg, err := c.Register(context.Background(), api.RegisterRequest{ID: uuid.NewString(), Name: name,
		APIAddr: strings.TrimPrefix(ping.URL, "http://"), VCPUs: 8, MemoryMiB: 8192})
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
				ctx, cancel := context.WithTimeout(context.Background(), every)
				c.Heartbeat(ctx, api.HeartbeatRequest{NodeID: a.id, VMs: []structs.VMObservation{}})
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
	a := startSimAgent(t, []string{base}, "hv1", interval)
	time.Sleep(3 * interval)
	a.alive.Store(false)
	silenced := time.Now()
	bound := 2 * (time.Duration(missed)*interval + interval) // 2 × (missed × interval + ping-back timeout)
	waitFor(t, bound+5*time.Second, func() string {
		n, err := c.GetNode(context.Background(), a.id)
		if err != nil || n.MonitorState != structs.MonitorUnreachable {
			return fmt.Sprintf("%+v %v", n.MonitorState, err)
		}
		return ""
	})
	took := time.Since(silenced)
	t.Logf("unreachable %s after silence (promise: %s × %d + ping-back)", took.Round(time.Millisecond), interval, missed)
	if took > bound {
		t.Fatalf("unreachable after %s, more than 2 × the promised %s", took, bound/2)
	}
	a.alive.Store(true)
	waitFor(t, 10*time.Second, func() string {
		n, _ := c.GetNode(context.Background(), a.id)
		if n.MonitorState != structs.MonitorNormal {
			return n.MonitorState
		}
		return ""
	})
}

func TestLeaderChangeCausesNoFalseUnreachable(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(30 * time.Second)
	var addrs []string
	for _, c := range tc.cfgs {
		addrs = append(addrs, c.APIURL())
	}
	// Heartbeat interval 1 s, 3 missed: agents heartbeat through all servers.
	var agents []*simAgent
	for i := 0; i < 5; i++ {
		agents = append(agents, startSimAgent(t, addrs, fmt.Sprintf("hv%d", i), time.Second))
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
