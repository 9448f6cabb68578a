package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// BenchmarkScale is issue 14's benchmark 6, scale on one leader: one
// `chime server --dev` as its own process (production timing: 15 s
// heartbeats, 3 missed), N simulated agents (this process) that register
// and heartbeat it over HTTP and list their VMs as running, M VMs created
// through the API, then an evacuation of the nodes that hold 1,000 VMs
// (their agents silenced, as if powered off; `node drain` then `node
// rebuild --confirm-fenced` of each) and a list of every VM. It reports
// the server process's CPU (/proc/PID/stat, as % of one core) and memory
// (VmRSS, VmHWM), the heartbeat latency the agents see, the time per
// operation, and how much CPU the load generator (this process) took.
//
// Full size: 10,000 agents and 100,000 VMs (about 10 to 15 minutes on 2
// cores). CHIME_BENCH_QUICK=1: 1,000 agents and 10,000 VMs (under 2
// minutes). CHIME_BENCH_AGENTS and CHIME_BENCH_VMS override the sizes,
// CHIME_BENCH_SECONDS the steady window (default 30 s; quick 20 s);
// CHIME_BENCH_BINARY takes a prebuilt binary, CHIME_BENCH_INPROCESS=1 runs
// the server in this process (for -cpuprofile/-memprofile; its figures
// then include the agents).
//
//	go test -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 1h ./chime/server/
//
// The server writes its memory figures every second (--mem-stats); the
// benchmark prints their peaks per phase (`scale mem: ...`) and its resident
// file-backed mappings. CHIME_BENCH_PROFILE_DIR=DIR has the server write
// DIR/cpu.pprof and DIR/heap.pprof when it stops; CHIME_BENCH_SERVER_ARGS
// and CHIME_BENCH_SERVER_ENV add server flags and environment.
//
// It prints one parsable line, `BENCH14 scale key=value ...`. Plain go test
// never runs it.
func BenchmarkScale(b *testing.B) {
	skipWithoutProc(b)
	cfg := scaleConfig{agents: 10000, vms: 100000, window: 30 * time.Second, evacuate: 1000, creators: 16}
	if os.Getenv("CHIME_BENCH_QUICK") == "1" {
		cfg.agents, cfg.vms, cfg.window = 1000, 10000, 20*time.Second
	}
	benchEnvInt(b, "CHIME_BENCH_AGENTS", &cfg.agents, 1, 20000)
	benchEnvInt(b, "CHIME_BENCH_VMS", &cfg.vms, 0, 1000000)
	secs := int(cfg.window / time.Second)
	benchEnvInt(b, "CHIME_BENCH_SECONDS", &secs, 1, 3600)
	cfg.window = time.Duration(secs) * time.Second
	cfg.evacuate = min(cfg.evacuate, cfg.vms/2)
	for i := 0; i < b.N; i++ {
		benchScale(b, cfg)
	}
}

type scaleConfig struct {
	agents, vms int
	window      time.Duration // steady heartbeat window
	evacuate    int           // VMs to evacuate (whole nodes, at least this many)
	creators    int           // concurrent create clients
}

// scaleFigures is what one run measured.
type scaleFigures struct {
	regPerSec                  float64
	creates, createFailed      int
	createPerSec               float64
	createP50, createP99       time.Duration
	createCPU                  time.Duration // server CPU per create (heartbeats of the phase included)
	cpuPct, genPct             float64       // server and load generator CPU over the window, % of one core
	rssKiB, hwmKiB             int64
	hbPerSec                   float64
	hbP50, hbP99, hbMax        time.Duration
	hbFailed                   int64
	evacVMs, evacNodes         int
	evacTook                   time.Duration
	evacCPU                    time.Duration
	listTook                   time.Duration
	listBytes                  int64
	listCount                  int
	livePings, unreachableLive int
	evacuated                  map[string]bool // node ids evacuated
}

func benchScale(b *testing.B, cfg scaleConfig) {
	hbCfg := heartbeatBenchConfig{interval: 15 * time.Second, missed: 3, workers: 128}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	srv := startBenchServer(b, ctx, hbCfg)
	if addr := os.Getenv("CHIME_BENCH_PPROF"); addr != "" && srv.inProcess {
		// Profiles of the in-process server under load: go tool pprof http://ADDR/debug/pprof/profile
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		ps := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = ps.ListenAndServe() }()
		defer ps.Close()
	}
	var fig scaleFigures
	load0 := loadAverage()
	marks := []phaseMark{{"register", time.Now()}}

	// Registrations, then every agent heartbeats at its phase of 15 s
	// (with ±10 % jitter) until the end.
	fleet, regTook := registeredFleet(b, ctx, srv, hbCfg, cfg.agents)
	defer fleet.close()
	fig.regPerSec = float64(cfg.agents) / regTook.Seconds()
	fmt.Printf("scale: %d agents registered in %s (%.0f/s)\n", cfg.agents, regTook.Round(time.Millisecond), fig.regPerSec)
	runCtx, stopFleet := context.WithCancel(ctx)
	fleet.start(runCtx, hbCfg.workers)
	defer func() { stopFleet(); fleet.wait() }()

	// Creates through the API; each agent lists its VMs as running from
	// its next heartbeat on (one observation write per node that got one).
	cpu0, _ := procCPU(srv.pid)
	t0 := time.Now()
	marks = append(marks, phaseMark{"create", t0})
	placed := scaleCreates(b, ctx, srv.base, fleet, cfg, &fig)
	createWall := time.Since(t0)
	cpu1, _ := procCPU(srv.pid)
	if fig.creates > 0 {
		fig.createPerSec = float64(fig.creates) / createWall.Seconds()
		fig.createCPU = (cpu1 - cpu0) / time.Duration(fig.creates)
	}
	fmt.Printf("scale: %d VMs created in %s (%.0f/s, p50 %.1f ms, p99 %.1f ms, %d failed, server CPU %.2f ms per create)\n",
		fig.creates, createWall.Round(time.Millisecond), fig.createPerSec, ms(fig.createP50), ms(fig.createP99), fig.createFailed, ms(fig.createCPU))
	// One interval for every agent to report its VMs once.
	marks = append(marks, phaseMark{"settle", time.Now()})
	if !sleepCtx(ctx, hbCfg.interval+2*time.Second) {
		b.Fatal("ended while settling")
	}

	// The steady window: heartbeats only.
	b.ResetTimer()
	hb0, err := srv.heartbeatsTotal(ctx)
	if err != nil {
		b.Fatal(err)
	}
	scpu0, _ := procCPU(srv.pid)
	gcpu0, _ := procCPU(os.Getpid())
	fail0, pings0 := fleet.failed.Load(), fleet.livePings.Load()
	w0 := time.Now()
	marks = append(marks, phaseMark{"steady", w0})
	fleet.recording.Store(true)
	if !sleepCtx(ctx, cfg.window) {
		b.Fatal("ended during the window")
	}
	fleet.recording.Store(false)
	elapsed := time.Since(w0)
	scpu1, _ := procCPU(srv.pid)
	gcpu1, _ := procCPU(os.Getpid())
	hb1, err := srv.heartbeatsTotal(ctx)
	if err != nil {
		b.Fatal(err)
	}
	fig.hbFailed = fleet.failed.Load() - fail0
	fig.hbPerSec = (hb1 - hb0) / elapsed.Seconds()
	fig.cpuPct = 100 * (scpu1 - scpu0).Seconds() / elapsed.Seconds()
	fig.genPct = 100 * (gcpu1 - gcpu0).Seconds() / elapsed.Seconds()
	if srv.inProcess {
		fig.genPct = 0 // one process: cpu is both
	}
	b.StopTimer()

	// Evacuation: whole nodes holding at least cfg.evacuate VMs, powered
	// off (agents silenced), each drained and rebuilt elsewhere.
	evacCtx, evacCancel := context.WithTimeout(ctx, 10*time.Minute)
	ecpu0, _ := procCPU(srv.pid)
	marks = append(marks, phaseMark{"evacuate", time.Now()})
	if err := scaleEvacuate(evacCtx, srv.base, fleet, placed, cfg.evacuate, &fig); err != nil {
		evacCancel()
		b.Fatalf("evacuation: %v\n%s", err, srv.logTail())
	}
	evacCancel()
	ecpu1, _ := procCPU(srv.pid)
	fig.evacCPU = ecpu1 - ecpu0

	// A list of every VM (the median of three), and a check that every
	// evacuated VM is on another node now.
	marks = append(marks, phaseMark{"list", time.Now()})
	if err := scaleList(ctx, srv.base, placed, &fig); err != nil {
		b.Fatalf("list: %v\n%s", err, srv.logTail())
	}
	if fig.rssKiB, fig.hwmKiB, err = procMemory(srv.pid); err != nil {
		b.Fatal(err)
	}
	// One more --mem-stats line after the list.
	if !sleepCtx(ctx, 1500*time.Millisecond) {
		b.Fatal("ended after the list")
	}
	peak := reportMemPeaks(srv, marks)
	if files, err := fileMappings(srv.pid); err == nil {
		fmt.Printf("scale mem: resident file-backed mappings at the end: %s\n", strings.Join(files, " "))
	}
	stopFleet()
	fleet.wait()
	lat := fleet.latencies()
	fig.hbP50, fig.hbP99 = percentile(lat, 0.50), percentile(lat, 0.99)
	if len(lat) > 0 {
		fig.hbMax = lat[len(lat)-1]
	}
	fig.livePings = int(fleet.livePings.Load() - pings0)
	if n, err := countUnreachableLive(ctx, srv.base, fleet); err == nil {
		fig.unreachableLive = n
	}

	mode := "process"
	if srv.inProcess {
		mode = "inprocess"
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(fig.cpuPct, "server-cpu-%")
	b.ReportMetric(float64(fig.rssKiB)/1024, "server-rss-MiB")
	b.ReportMetric(ms(fig.hbP99), "hb-p99-ms")
	b.ReportMetric(fig.createPerSec, "creates/s")
	b.ReportMetric(fig.evacTook.Seconds(), "evac-s")
	b.ReportMetric(fig.listTook.Seconds(), "list-s")
	fmt.Printf("BENCH14 scale servers=1 mode=%s agents=%d vms=%d interval=15s window=%s cpu=%.1f%% gen_cpu=%.1f%% rss=%.0fMiB hwm=%.0fMiB "+
		"hb_rate=%.1f/s hb_p50=%.2fms hb_p99=%.2fms hb_max=%.1fms hb_failed=%d "+
		"register=%.0f/s create=%.0f/s create_p50=%.1fms create_p99=%.1fms create_cpu=%.2fms create_failed=%d "+
		"evac_vms=%d evac_nodes=%d evac=%.2fs evac_cpu=%.2fs list_vms=%d list=%.2fs list_mib=%.1f "+
		"live_pingbacks=%d live_unreachable=%d%s load=%s,%s\n",
		mode, cfg.agents, cfg.vms, cfg.window, fig.cpuPct, fig.genPct, float64(fig.rssKiB)/1024, float64(fig.hwmKiB)/1024,
		fig.hbPerSec, ms(fig.hbP50), ms(fig.hbP99), ms(fig.hbMax), fig.hbFailed,
		fig.regPerSec, fig.createPerSec, ms(fig.createP50), ms(fig.createP99), ms(fig.createCPU), fig.createFailed,
		fig.evacVMs, fig.evacNodes, fig.evacTook.Seconds(), fig.evacCPU.Seconds(), fig.listCount, fig.listTook.Seconds(),
		float64(fig.listBytes)/(1<<20), fig.livePings, fig.unreachableLive, memFields(peak), load0, loadAverage())
	if e := fleet.lastErr.Load().(string); e != "" {
		fmt.Printf("scale: last heartbeat error: %s\n", e)
	}
	if fig.createFailed > 0 || fig.hbFailed > 0 {
		b.Errorf("%d creates and %d heartbeats failed", fig.createFailed, fig.hbFailed)
	}
}

// placedVM is one created VM as the benchmark tracks it.
type placedVM struct {
	id, node string
	gen      uint64
}

// scaleCreates creates cfg.vms VMs through the API with cfg.creators
// keep-alive clients and gives each agent its VMs to list. It returns the
// VMs created, in creation order per client.
func scaleCreates(b *testing.B, ctx context.Context, base string, fleet *benchFleet, cfg scaleConfig, fig *scaleFigures) []placedVM {
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var out []placedVM
	perNode := map[string][]structs.VMObservation{}
	var firstErr error
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.creators}}
	defer hc.CloseIdleConnections()
	var wg sync.WaitGroup
	for c := 0; c < cfg.creators; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := api.NewClient(base)
			cl.HTTP, cl.Retries = hc, 0
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= cfg.vms {
					return
				}
				t0 := time.Now()
				vm, err := cl.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("vm-%06d", i), VCPUs: 1, Memory: 64})
				d := time.Since(t0)
				if i > 0 && i%1000 == 0 {
					fmt.Printf("scale: %d creates issued (%s)\n", i, time.Now().Format(time.TimeOnly))
				}
				mu.Lock()
				if err != nil {
					fig.createFailed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					lat = append(lat, d)
					out = append(out, placedVM{id: vm.ID, node: vm.NodeID, gen: vm.Generation})
					if vm.NodeID != "" {
						l := append(perNode[vm.NodeID], structs.VMObservation{VMID: vm.ID, State: structs.StateRunning, Reason: "booted", Generation: vm.Generation})
						perNode[vm.NodeID] = l
						if a := fleet.byID[vm.NodeID]; a != nil {
							cp := append([]structs.VMObservation(nil), l...)
							a.vms.Store(&cp)
						}
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		fmt.Printf("scale: first create failure: %v\n", firstErr)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fig.creates = len(lat)
	fig.createP50, fig.createP99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return out
}

// scaleEvacuate picks whole nodes until they hold at least want VMs,
// silences their agents (power loss), then drains and rebuilds each with
// --confirm-fenced, 4 nodes at a time, and records the time from the
// first drain to the last rebuild's answer.
func scaleEvacuate(ctx context.Context, base string, fleet *benchFleet, placed []placedVM, want int, fig *scaleFigures) error {
	count := map[string]int{}
	for _, v := range placed {
		if v.node != "" {
			count[v.node]++
		}
	}
	var victims []*benchAgent
	for _, a := range fleet.agents {
		if fig.evacVMs >= want {
			break
		}
		if c := count[a.id]; c > 0 {
			victims = append(victims, a)
			fig.evacVMs += c
		}
	}
	fig.evacNodes = len(victims)
	fig.evacuated = map[string]bool{}
	for _, a := range victims {
		fig.evacuated[a.id] = true
	}
	for _, a := range victims {
		if _, err := fleet.silence(ctx, a); err != nil {
			return err
		}
	}
	cl := api.NewClient(base)
	cl.Retries = 0
	jobs := make(chan *benchAgent)
	errs := make(chan error, len(victims))
	var wg sync.WaitGroup
	start := time.Now()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range jobs {
				if err := drainRebuild(ctx, cl, a.id); err != nil {
					errs <- fmt.Errorf("node %s: %w", a.name, err)
				}
			}
		}()
	}
	for _, a := range victims {
		jobs <- a
	}
	close(jobs)
	wg.Wait()
	fig.evacTook = time.Since(start)
	close(errs)
	for err := range errs {
		return err
	}
	fmt.Printf("scale: evacuated %d VMs of %d nodes (drain + rebuild --confirm-fenced) in %s\n",
		fig.evacVMs, fig.evacNodes, fig.evacTook.Round(time.Millisecond))
	return nil
}

// drainRebuild drains node id and rebuilds it with --confirm-fenced; a
// drain refused because the node changed meanwhile (a compare-and-set) is
// tried again.
func drainRebuild(ctx context.Context, cl *api.Client, id string) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if _, err = cl.NodeTask(ctx, id, "drain", nil); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	t, err := cl.NodeTask(ctx, id, "rebuild", map[string]bool{"confirm_fenced": true})
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	if t.State != structs.TaskSucceeded {
		return fmt.Errorf("rebuild task %s: %s (%s)", t.ID, t.State, t.Error)
	}
	return nil
}

// scaleList lists every VM three times (the median is reported), then
// checks that no VM is left on an evacuated node.
func scaleList(ctx context.Context, base string, placed []placedVM, fig *scaleFigures) error {
	var took []time.Duration
	for range 3 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, base+"/v1/vms", nil)
		if err != nil {
			cancel()
			return err
		}
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v1/vms: %s", resp.Status)
		}
		took = append(took, time.Since(t0))
		fig.listBytes = n
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	fig.listTook = took[1]
	cl := api.NewClient(base)
	vms, _, err := cl.ListVMs(ctx, api.QueryOptions{})
	if err != nil {
		return err
	}
	fig.listCount = len(vms)
	if len(vms) != len(placed) {
		return fmt.Errorf("listed %d VMs, created %d", len(vms), len(placed))
	}
	for _, vm := range vms {
		if fig.evacuated[vm.NodeID] {
			return fmt.Errorf("vm %s is still placed on evacuated node %s", vm.Name, vm.NodeID)
		}
	}
	return nil
}

// countUnreachableLive counts the unreachable nodes whose agent still
// heartbeats: false positives.
func countUnreachableLive(ctx context.Context, base string, fleet *benchFleet) (int, error) {
	nodes, _, err := api.NewClient(base).ListNodes(ctx, api.QueryOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, nd := range nodes {
		if a := fleet.byID[nd.ID]; a != nil && !a.silenced.Load() && nd.MonitorState == structs.MonitorUnreachable {
			n++
		}
	}
	return n, nil
}
