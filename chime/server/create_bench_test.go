package server

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/fsm"
)

// BenchmarkCreates measures the write path: VM creates through the API
// (mutual TLS, ACLs on, keep-alive, one connection per client) against a
// real 3-server cluster in this process, with 3 nodes that have room, at
// 1, 16 and 64 concurrent clients, with 0 and 10,000 VMs already present
// (100,000 too with CHIME_BENCH_BIG=1). It prints creates/s and the
// p50/p99 latency clients see. See docs/benchmarks.md.
//
//	go test -run '^$' -bench BenchmarkCreates -benchtime 1x ./chime/server/
//
// CHIME_BENCH_SECONDS is the window per concurrency (default 10);
// CHIME_BENCH_PRESENT overrides the list of VM counts ("0,10000").
// Plain go test never runs it.
func BenchmarkCreates(b *testing.B) {
	secs := 10
	if v, err := strconv.Atoi(os.Getenv("CHIME_BENCH_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	present := []int{0, 10000}
	if os.Getenv("CHIME_BENCH_BIG") == "1" {
		present = append(present, 100000)
	}
	if v := os.Getenv("CHIME_BENCH_PRESENT"); v != "" {
		present = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 {
				b.Fatalf("CHIME_BENCH_PRESENT: %q is not a count", f)
			}
			present = append(present, n)
		}
	}
	for _, n := range present {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchCreates(b, n, time.Duration(secs)*time.Second)
			}
		})
	}
}

type createFigures struct {
	clients   int
	ok, fail  int
	perSecond float64
	p50, p99  time.Duration
}

func benchCreates(b *testing.B, present int, window time.Duration) {
	tc := newTestCluster(b, 3, func(c *Config) {
		// Simulated nodes never heartbeat: keep them normal for the run.
		c.HeartbeatInterval = 10 * time.Minute
		c.RaftTimeScale = 1
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.Name, Level: hclog.Error})
	})
	l := tc.leader(30 * time.Second)
	ctx := context.Background()
	var nodes []string
	for i := 0; i < 3; i++ {
		r, err := tc.client(l).Register(ctx, api.RegisterRequest{ID: uuid.NewString(), Name: fmt.Sprintf("hv%d", i+1),
			APIAddr: "127.0.0.1:1", VCPUs: structs.MaxNodeVCPUs, MemoryMiB: 1 << 30})
		if err != nil {
			b.Fatalf("register: %v", err)
		}
		nodes = append(nodes, r.NodeID)
	}
	start := time.Now()
	preload(b, tc.srv[l], nodes, present)
	fmt.Printf("creates: %d VMs present (preloaded through Raft in %s)\n", present, time.Since(start).Round(time.Millisecond))

	b.ResetTimer()
	var figs []createFigures
	for _, clients := range []int{1, 16, 64} {
		f := runCreates(b, tc, l, clients, window, fmt.Sprintf("p%d-c%d", present, clients))
		figs = append(figs, f)
		fmt.Printf("creates: vms=%-6d clients=%-2d  %7.1f creates/s  p50 %6.1f ms  p99 %7.1f ms  ok %d  failed %d\n",
			present, clients, f.perSecond, ms(f.p50), ms(f.p99), f.ok, f.fail)
		b.ReportMetric(f.perSecond, fmt.Sprintf("creates/s@%d", clients))
	}
	b.StopTimer()
	_ = figs
}

// preload puts n placed VMs into the state through Raft on the leader
// (round-robin over nodes, bypassing placement), 32 proposals at a time.
func preload(b *testing.B, s *Server, nodes []string, n int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				vm := structs.VM{ID: uuid.NewString(), Name: fmt.Sprintf("pre-%06d", i), DesiredState: structs.DesiredRunning,
					Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
				if _, err := s.Propose(context.Background(), "", fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: nodes[i%len(nodes)]}); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		b.Fatalf("preload: %v", err)
	}
}

// runCreates runs clients goroutines, each with its own keep-alive
// client of the leader, creating VMs back to back for window.
func runCreates(b *testing.B, tc *testCluster, l, clients int, window time.Duration, prefix string) createFigures {
	var mu sync.Mutex
	var lat []time.Duration
	var fail int
	var firstErr error
	deadline := time.Now().Add(window)
	var wg sync.WaitGroup
	began := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			cl := tc.clientOf(tlsconf.RoleCLI, tc.cfgs[l].APIURL())
			cl.Retries = 0
			for i := 0; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				_, err := cl.CreateVM(context.Background(), api.CreateVMRequest{Name: fmt.Sprintf("%s-%d-%d", prefix, c, i), VCPUs: 1, Memory: 64})
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					fail++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(began)
	if firstErr != nil {
		fmt.Printf("creates: first failure: %v\n", firstErr)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	f := createFigures{clients: clients, ok: len(lat), fail: fail, perSecond: float64(len(lat)) / elapsed.Seconds()}
	if len(lat) > 0 {
		f.p50, f.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	}
	return f
}
