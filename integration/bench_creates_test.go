package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// BenchmarkCreatesVsEtcd is issue 14's benchmark 4 against its reference:
// VM creates through chime's API (three real `chime server` processes on
// loopback, production Raft timing, mutual TLS, ACLs, three registered
// nodes with room) and puts through etcd's HTTP/JSON gateway (three
// members on loopback), from one load generator (keep-alive HTTP, one
// connection per client, 1, 16 and 64 concurrent clients), in the same
// run, windows alternating between the two (CHIME_BENCH_ROUNDS rounds per
// concurrency, default 3, quick mode 1; CHIME_BENCH_SECONDS seconds per
// window, default 10, quick mode 2). It runs with 0 and 10,000 VMs (and as
// many etcd keys) already present, 100,000 too with CHIME_BENCH_BIG=1
// (CHIME_BENCH_PRESENT overrides the list), and prints one line per
// count and concurrency:
//
//	BENCH14 creates-etcd vms=… clients=… creates_per_s=… p50_ms=… p99_ms=… … etcd_puts_per_s=… … ratio=…
//
// (ratio = chime creates/s ÷ etcd puts/s; vms is the count when the row
// began: the windows add VMs). CHIME_BENCH_CPUPROFILE=DIR writes each
// chime server's CPU profile of the whole run there (`chime server
// --cpu-profile`). Plain `go test` never runs it:
//
//	go test -run '^$' -bench BenchmarkCreatesVsEtcd -benchtime 1x ./integration
func BenchmarkCreatesVsEtcd(b *testing.B) {
	for range b.N {
		benchChild(b, "TestBench14CreatesRun", "CHIME_BENCH14_CREATES", "1", 2*time.Hour)
	}
}

// TestBench14CreatesRun is BenchmarkCreatesVsEtcd's run (skipped unless
// the benchmark sets CHIME_BENCH14_CREATES).
func TestBench14CreatesRun(t *testing.T) {
	if os.Getenv("CHIME_BENCH14_CREATES") == "" {
		t.Skip("a run of BenchmarkCreatesVsEtcd (set by the benchmark)")
	}
	rounds := benchCount(t, "CHIME_BENCH_ROUNDS", 1, 3)
	window := time.Duration(benchCount(t, "CHIME_BENCH_SECONDS", 2, 10)) * time.Second
	present := benchPresent(t)

	profDir := os.Getenv("CHIME_BENCH_CPUPROFILE")
	ss, ec := benchClusters(t)
	if profDir != "" {
		// Restart each server with --cpu-profile (same data, same ports):
		// the profile covers the load, not the cluster's formation.
		for i := range ss.names {
			ss.procs[i].stop()
			ss.extra = []string{"--cpu-profile", filepath.Join(profDir, ss.names[i]+".pprof")}
			ss.start(i)
		}
		ss.leader(60 * time.Second)
	}
	ctx := context.Background()
	l := ss.leader(60 * time.Second)
	for i := range 3 {
		r, err := ss.tls.agentClient(ss.addr(l)).Register(ctx, api.RegisterRequest{ID: fmt.Sprintf("00000000-0000-4000-8000-0000000000%02d", i+1),
			Name: fmt.Sprintf("hv%d", i+1), APIAddr: "127.0.0.1:1", VCPUs: structs.MaxNodeVCPUs, MemoryMiB: 1 << 30})
		if err != nil {
			t.Fatalf("register hv%d: %v", i+1, err)
		}
		benchHeartbeats(t, ss.tls.agentClient(ss.addrs()...), r)
	}
	el := ec.leader(60 * time.Second)

	// One keep-alive connection per load client, to each leader.
	chimeOp := func(c int) loadOp {
		cl := ss.client(l)
		cl.Retries = 0
		return func(ctx context.Context, name string) error {
			_, err := cl.CreateVM(ctx, api.CreateVMRequest{Name: name, VCPUs: 1, Memory: 64})
			return err
		}
	}
	etcdOp := func(c int) loadOp {
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		return func(ctx context.Context, name string) error {
			// About the size of a VM's record: the value a create stores.
			return ec.putWith(ctx, hc, el, "/vms/"+name, `{"name":"`+name+`","vcpus":1,"memory_mib":64,"desired_state":"running","node_id":"00000000-0000-4000-8000-000000000001"}`)
		}
	}

	vms := 0
	for pi, n := range present {
		if n > vms {
			t0 := time.Now()
			runLoad(t, 32, time.Hour, n-vms, fmt.Sprintf("pre%d", pi), chimeOp).mustAllOK(t, "chime preload")
			cd := time.Since(t0)
			t0 = time.Now()
			runLoad(t, 32, time.Hour, n-vms, fmt.Sprintf("pre%d", pi), etcdOp).mustAllOK(t, "etcd preload")
			t.Logf("preload to %d VMs: chime %s, etcd %s (32 clients)", n, cd.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			vms = n
		}
		for _, clients := range []int{1, 16, 64} {
			var cf, ef loadFigures
			row := vms
			for r := range rounds {
				prefix := fmt.Sprintf("w%d-c%d-r%d", pi, clients, r)
				chimeFirst := r%2 == 0
				for k := range 2 {
					if (k == 0) == chimeFirst {
						cf.add(runLoad(t, clients, window, 0, prefix, chimeOp))
					} else {
						ef.add(runLoad(t, clients, window, 0, prefix, etcdOp))
					}
				}
			}
			vms += cf.ok
			ratio := 0.0
			if ef.perSecond() > 0 {
				ratio = cf.perSecond() / ef.perSecond()
			}
			t.Logf("vms=%d clients=%d: chime %.1f creates/s (p50 %.1f ms, %d failed %v), etcd %.1f puts/s (p50 %.1f ms, %d failed %v)",
				row, clients, cf.perSecond(), ms(cf.pct(50)), cf.fail, cf.firstErr, ef.perSecond(), ms(ef.pct(50)), ef.fail, ef.firstErr)
			fmt.Printf("BENCH14 creates-etcd vms=%d clients=%d creates_per_s=%.1f p50_ms=%.1f p99_ms=%.1f n=%d failed=%d "+
				"etcd_puts_per_s=%.1f etcd_p50_ms=%.1f etcd_p99_ms=%.1f etcd_n=%d etcd_failed=%d ratio=%.2f\n",
				row, clients, cf.perSecond(), ms(cf.pct(50)), ms(cf.pct(99)), cf.ok, cf.fail,
				ef.perSecond(), ms(ef.pct(50)), ms(ef.pct(99)), ef.ok, ef.fail, ratio)
		}
	}
	if profDir != "" {
		for i := range ss.names {
			ss.procs[i].stop() // SIGTERM: the server writes its profile on the way out
		}
		t.Logf("CPU profiles in %s (go tool pprof -top %s)", profDir, filepath.Join(profDir, "s1.pprof"))
	}
}

// benchHeartbeats keeps a registered node up for the run, as its agent
// would: a heartbeat, at the interval the servers gave it, that says nothing about its VMs
// (VMsUnknown), so that the node neither goes unreachable (creates would
// then pile up pending) nor reports the VMs placed on it missing.
func benchHeartbeats(t *testing.T, c *api.Client, r *api.RegisterResponse) {
	c.SetCredentials(r.NodeID, r.Secret)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		every := r.Timing.HeartbeatInterval
		if every <= 0 {
			every = 15 * time.Second
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := c.Heartbeat(ctx, api.HeartbeatRequest{NodeID: r.NodeID, VMsUnknown: true})
			cancel()
			if err != nil {
				t.Logf("heartbeat of %s: %v", r.NodeID, err)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// benchPresent is the list of VM counts to measure at: CHIME_BENCH_PRESENT
// ("0,10000"), else 0 and 10,000, and 100,000 with CHIME_BENCH_BIG=1.
func benchPresent(t *testing.T) []int {
	t.Helper()
	present := []int{0, 10000}
	if os.Getenv("CHIME_BENCH_BIG") == "1" {
		present = append(present, 100000)
	}
	if v := os.Getenv("CHIME_BENCH_PRESENT"); v != "" {
		present = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 0 {
				t.Fatalf("CHIME_BENCH_PRESENT: %q is not a count", f)
			}
			present = append(present, n)
		}
	}
	return present
}

// loadOp is one write of a load client (name unique in the run).
type loadOp func(ctx context.Context, name string) error

// loadFigures is what a load run measured (summed over windows by add).
type loadFigures struct {
	ok, fail int
	elapsed  time.Duration
	lat      []time.Duration
	firstErr error
}

func (f *loadFigures) add(g loadFigures) {
	f.ok, f.fail, f.elapsed = f.ok+g.ok, f.fail+g.fail, f.elapsed+g.elapsed
	f.lat = append(f.lat, g.lat...)
	if f.firstErr == nil {
		f.firstErr = g.firstErr
	}
}

func (f loadFigures) perSecond() float64 {
	if f.elapsed <= 0 {
		return 0
	}
	return float64(f.ok) / f.elapsed.Seconds()
}

func (f loadFigures) pct(p float64) time.Duration {
	if len(f.lat) == 0 {
		return 0
	}
	return nearestRank(f.lat, p)
}

func (f loadFigures) mustAllOK(t *testing.T, what string) {
	t.Helper()
	if f.fail > 0 {
		t.Fatalf("%s: %d writes failed, first: %v", what, f.fail, f.firstErr)
	}
}

// runLoad runs clients goroutines, each with the op newOp makes for it
// (its own keep-alive connection), writing back to back until window ends
// or, if total > 0, until total writes were sent.
func runLoad(t *testing.T, clients int, window time.Duration, total int, prefix string, newOp func(c int) loadOp) loadFigures {
	t.Helper()
	var mu sync.Mutex
	var f loadFigures
	var sent int
	deadline := time.Now().Add(window)
	began := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		op := newOp(c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				mu.Lock()
				if total > 0 && sent >= total {
					mu.Unlock()
					return
				}
				sent++
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				t0 := time.Now()
				err := op(ctx, fmt.Sprintf("%s-%d-%d", prefix, c, i))
				d := time.Since(t0)
				cancel()
				mu.Lock()
				if err != nil {
					f.fail++
					if f.firstErr == nil {
						f.firstErr = err
					}
				} else {
					f.ok++
					f.lat = append(f.lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	f.elapsed = time.Since(began)
	return f
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
