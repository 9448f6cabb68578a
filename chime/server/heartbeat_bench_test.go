package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/ports"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
)

// BenchmarkHeartbeats runs one `chime server --dev` as its own process and N
// simulated agents (this process) heartbeating it on loopback, and reports
// what the server handles: heartbeats/s (server-side counter and
// client-side successes), heartbeat latency, the server process's CPU and
// memory over a fixed window, and how long a silenced agent takes to be
// marked unreachable, next to the bound missed × interval + monitor tick +
// ping-back timeout.
//
// It is a fixed-duration scenario, not a loop over b.N: run it with
//
//	go test -run '^$' -bench BenchmarkHeartbeats -benchtime 1x ./chime/server/
//
// Environment: CHIME_BENCH_SECONDS (measured window, default 20),
// CHIME_BENCH_INTERVAL (heartbeat interval, default 1s),
// CHIME_BENCH_MISSED (missed heartbeats, default 3), CHIME_BENCH_WORKERS
// (heartbeat senders, default 128), CHIME_BENCH_BINARY (a prebuilt chime
// binary instead of `go build`).
func BenchmarkHeartbeats(b *testing.B) {
	skipWithoutProc(b)
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) { benchHeartbeats(b, n) })
	}
}

// heartbeatBenchConfig is the scenario's timing, from the environment.
type heartbeatBenchConfig struct {
	window   time.Duration // measured window
	interval time.Duration // heartbeat interval (server flag, pushed to agents)
	missed   int           // missed heartbeats before a ping-back
	workers  int           // concurrent heartbeat senders
}

func heartbeatBenchConfigFromEnv(b *testing.B) heartbeatBenchConfig {
	c := heartbeatBenchConfig{window: 20 * time.Second, interval: time.Second, missed: 3, workers: 128}
	secs := int(c.window / time.Second)
	benchEnvInt(b, "CHIME_BENCH_SECONDS", &secs, 1, 3600)
	c.window = time.Duration(secs) * time.Second
	if v := os.Getenv("CHIME_BENCH_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 100*time.Millisecond || d > time.Minute {
			b.Fatalf("CHIME_BENCH_INTERVAL=%q: want a duration in 100ms..1m", v)
		}
		c.interval = d
	}
	benchEnvInt(b, "CHIME_BENCH_MISSED", &c.missed, 1, 20)
	benchEnvInt(b, "CHIME_BENCH_WORKERS", &c.workers, 1, 4096)
	return c
}

// Helpers of the benchmarks that run a benchServer and a benchFleet
// (BenchmarkHeartbeats, BenchmarkScale).

// skipWithoutProc skips a benchmark that reads the server's CPU and memory
// from /proc where there is none.
func skipWithoutProc(b *testing.B) {
	b.Helper()
	if runtime.GOOS != "linux" {
		b.Skip("reads the server's CPU and memory from /proc")
	}
}

// benchEnvInt sets *dst from the environment variable name when it is
// set, and fails the benchmark unless it is an integer in lo..hi.
func benchEnvInt(b *testing.B, name string, dst *int, lo, hi int) {
	b.Helper()
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			b.Fatalf("%s=%q: want %d..%d", name, v, lo, hi)
		}
		*dst = n
	}
}

// registeredFleet makes srv's fleet of simulated agents (cfg's interval and
// workers) and registers n agents, 32 at a time, within ctx; it returns the
// fleet, which the caller closes, and how long the registrations took. It
// fails the benchmark with the server's log tail when they fail.
func registeredFleet(b *testing.B, ctx context.Context, srv *benchServer, cfg heartbeatBenchConfig, n int) (*benchFleet, time.Duration) {
	b.Helper()
	fleet, err := newBenchFleet(srv.base, cfg.interval, cfg.workers)
	if err != nil {
		b.Fatal(err)
	}
	took, err := fleet.register(ctx, n, 32)
	if err != nil {
		fleet.close()
		b.Fatalf("%v\n%s", err, srv.logTail())
	}
	return fleet, took
}

func benchHeartbeats(b *testing.B, n int) {
	cfg := heartbeatBenchConfigFromEnv(b)
	// Everything below ends by this deadline at the latest.
	registerBudget := 2*time.Minute + time.Duration(n)*20*time.Millisecond
	warmup := max(3*cfg.interval, 3*time.Second)
	bound := time.Duration(cfg.missed)*cfg.interval + max(cfg.interval/4, 50*time.Millisecond) + min(cfg.interval, 5*time.Second)
	detectBudget := 3*bound + 10*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), registerBudget+warmup+cfg.window+detectBudget+time.Minute)
	defer cancel()

	srv := startBenchServer(b, ctx, cfg)
	regCtx, regCancel := context.WithTimeout(ctx, registerBudget)
	fleet, regTook := registeredFleet(b, regCtx, srv, cfg, n)
	regCancel()
	defer fleet.close()

	runCtx, stopFleet := context.WithTimeout(ctx, warmup+cfg.window+detectBudget+10*time.Second)
	fleet.start(runCtx, cfg.workers)
	defer func() { stopFleet(); fleet.wait() }()
	if !sleepCtx(runCtx, warmup) {
		b.Fatal("ended during warm-up")
	}

	// The measured window.
	b.ResetTimer()
	hb0, err := srv.heartbeatsTotal(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cpu0, err := procCPU(srv.pid)
	if err != nil {
		b.Fatal(err)
	}
	load0 := loadAverage()
	ok0, fail0, t0 := fleet.ok.Load(), fleet.failed.Load(), time.Now()
	livePings0 := fleet.livePings.Load()
	fleet.recording.Store(true)
	if !sleepCtx(runCtx, cfg.window) {
		b.Fatal("ended during the measured window")
	}
	fleet.recording.Store(false)
	elapsed := time.Since(t0)
	cpu1, err := procCPU(srv.pid)
	if err != nil {
		b.Fatal(err)
	}
	hb1, err := srv.heartbeatsTotal(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ok1, fail1 := fleet.ok.Load(), fleet.failed.Load()
	load1 := loadAverage()
	livePings := fleet.livePings.Load() - livePings0
	rss, hwm, err := procMemory(srv.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()

	// Detection: silence one agent while the others keep heartbeating.
	victim := fleet.agents[n/2]
	silenceCtx, silenceCancel := context.WithTimeout(ctx, 15*time.Second)
	lastBeat, err := fleet.silence(silenceCtx, victim)
	silenceCancel()
	if err != nil {
		b.Fatal(err)
	}
	detected, lastSeen, err := waitUnreachable(ctx, srv.base, victim.id, lastBeat.Add(detectBudget))
	if err != nil {
		b.Fatalf("silenced %s: %v (last seen: %s)\n%s", victim.name, err, lastSeen, srv.logTail())
	}
	detection := detected.Sub(lastBeat)
	falseUnreachable, err := countUnreachable(ctx, srv.base, victim.id)
	if err != nil {
		b.Fatal(err)
	}
	stopFleet()
	fleet.wait()
	lat := fleet.latencies()

	serverRate := float64(hb1-hb0) / elapsed.Seconds()
	clientRate := float64(ok1-ok0) / elapsed.Seconds()
	cpuPct := 100 * (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(serverRate, "hb/s-server")
	b.ReportMetric(clientRate, "hb/s-client")
	b.ReportMetric(float64(n)/cfg.interval.Seconds(), "hb/s-offered")
	b.ReportMetric(float64(fail1-fail0), "hb-failed")
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(cpuPct, "server-cpu-%")
	b.ReportMetric(float64(rss)/1024, "server-rss-MiB")
	b.ReportMetric(float64(hwm)/1024, "server-peak-rss-MiB")
	b.ReportMetric(detection.Seconds(), "detect-s")
	b.ReportMetric(bound.Seconds(), "bound-s")
	b.ReportMetric(float64(livePings), "live-pingbacks")
	b.ReportMetric(float64(falseUnreachable), "false-unreachable")
	b.ReportMetric(float64(n)/regTook.Seconds(), "registers/s")
	b.Logf("agents=%d interval=%s missed=%d window=%s: server %.0f hb/s (client ok %.0f hb/s, offered %.0f, failed %d), "+
		"latency p50 %.1f ms p99 %.1f ms, server CPU %.0f%% of one core, RSS %.0f MiB (peak %.0f), "+
		"silenced %s detected unreachable after %.2f s (bound %.2f s), %d ping-backs to live agents, %d other nodes unreachable, "+
		"registration %.0f/s",
		n, cfg.interval, cfg.missed, elapsed.Round(time.Millisecond), serverRate, clientRate, float64(n)/cfg.interval.Seconds(), fail1-fail0,
		ms(p50), ms(p99), cpuPct, float64(rss)/1024, float64(hwm)/1024,
		victim.name, detection.Seconds(), bound.Seconds(), livePings, falseUnreachable, float64(n)/regTook.Seconds())
	b.Logf("machine: %d CPUs, load average %s at the window's start, %s at its end (other work on the machine skews every figure)",
		runtime.NumCPU(), load0, load1)
	if srv.inProcess {
		b.Logf("in-process server: CPU and RSS above include the simulated agents")
	}
	if e := fleet.lastErr.Load().(string); e != "" {
		b.Logf("last heartbeat error: %s", e)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// sleepCtx sleeps for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// waitUnreachable polls the node every 50 ms until its monitor state is
// unreachable, and returns when that was first seen.
func waitUnreachable(ctx context.Context, base, id string, deadline time.Time) (time.Time, string, error) {
	c := api.NewClient(base)
	c.Retries = 0
	last := "nothing yet"
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := c.GetNode(rctx, id)
		cancel()
		now := time.Now()
		switch {
		case err != nil:
			last = "error: " + err.Error()
		case n.MonitorState == structs.MonitorUnreachable:
			return now, n.MonitorState, nil
		default:
			last = n.MonitorState
		}
		if now.After(deadline) {
			return time.Time{}, last, errors.New("not unreachable by the deadline")
		}
		select {
		case <-ctx.Done():
			return time.Time{}, last, ctx.Err()
		case <-t.C:
		}
	}
}

// countUnreachable counts unreachable nodes other than except.
func countUnreachable(ctx context.Context, base, except string) (int, error) {
	c := api.NewClient(base)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nodes, _, err := c.ListNodes(rctx, api.QueryOptions{})
	if err != nil {
		return 0, err
	}
	count := 0
	for _, n := range nodes {
		if n.ID != except && n.MonitorState == structs.MonitorUnreachable {
			count++
		}
	}
	return count, nil
}

// benchServer is a `chime server --dev` child process, or with
// CHIME_BENCH_INPROCESS=1 a server in this process (so that -cpuprofile
// sees the server; its CPU and memory figures then include the agents).
type benchServer struct {
	pid       int
	inProcess bool
	base      string        // API URL
	log       string        // its log file
	memStats  string        // its --mem-stats file ("" in-process)
	exited    chan struct{} // closed when the child exited (nil in-process)
}

// startBenchServer builds (or takes) the chime binary and starts a dev
// server on 127.0.0.1 with the benchmark's timing. The process is stopped
// at cleanup, and killed by the kernel should this process die first.
func startBenchServer(b *testing.B, ctx context.Context, cfg heartbeatBenchConfig) *benchServer {
	b.Helper()
	dir := b.TempDir()
	if os.Getenv("CHIME_BENCH_INPROCESS") == "1" {
		return startInProcessBenchServer(b, ctx, cfg, dir)
	}
	bin := os.Getenv("CHIME_BENCH_BINARY")
	if bin == "" {
		bin = filepath.Join(dir, "chime")
		goTool := "go"
		if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
			if p := filepath.Join(strings.TrimSpace(string(out)), "bin", "go"); fileExists(p) {
				goTool = p
			}
		}
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		out, err := exec.CommandContext(bctx, goTool, "build", "-o", bin, "github.com/chime-ha/chime/chime").CombinedOutput()
		cancel()
		if err != nil {
			b.Fatalf("go build chime: %v\n%s", err, out)
		}
	}
	ports := ports.Free(b, "127.0.0.1", 3)
	s := &benchServer{base: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), log: filepath.Join(dir, "server.log"),
		memStats: filepath.Join(dir, "memstats.log"), exited: make(chan struct{})}
	logf, err := os.Create(s.log)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "--log-level", "warn", "server", "--dev", "--name", "bench",
		"--data-dir", filepath.Join(dir, "data"), "--bind", "127.0.0.1",
		"--api-port", strconv.Itoa(ports[0]), "--raft-port", strconv.Itoa(ports[1]), "--gossip-port", strconv.Itoa(ports[2]),
		"--gossip-profile", "local", "--heartbeat-interval", cfg.interval.String(),
		"--missed-heartbeats", strconv.Itoa(cfg.missed), "--mem-stats", s.memStats)
	if pd := os.Getenv("CHIME_BENCH_PROFILE_DIR"); pd != "" {
		// Written when the server stops (at the end of the benchmark).
		cmd.Args = append(cmd.Args, "--cpu-profile", filepath.Join(pd, "cpu.pprof"), "--mem-profile", filepath.Join(pd, "heap.pprof"))
		fmt.Printf("bench: server profiles at stop: %s, %s\n", filepath.Join(pd, "cpu.pprof"), filepath.Join(pd, "heap.pprof"))
	}
	cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("CHIME_BENCH_SERVER_ARGS"))...)
	cmd.Env = append(os.Environ(), strings.Fields(os.Getenv("CHIME_BENCH_SERVER_ENV"))...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		b.Fatalf("start chime server: %v", err)
	}
	s.pid = cmd.Process.Pid
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(s.exited)
	}()
	// Stop: SIGTERM, then SIGKILL after 10 s.
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-s.exited
		}
	})
	if err := s.waitLeader(ctx, 30*time.Second); err != nil {
		b.Fatalf("%v\n%s", err, s.logTail())
	}
	return s
}

func startInProcessBenchServer(b *testing.B, ctx context.Context, bc heartbeatBenchConfig, dir string) *benchServer {
	b.Helper()
	ports := ports.Free(b, "127.0.0.1", 3)
	s := &benchServer{pid: os.Getpid(), inProcess: true, base: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		log: filepath.Join(dir, "server.log")}
	logf, err := os.Create(s.log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { logf.Close() })
	cfg := DefaultConfig()
	cfg.Dev, cfg.Name, cfg.DataDir = true, "bench", filepath.Join(dir, "data")
	cfg.APIPort, cfg.RaftPort, cfg.GossipPort = ports[0], ports[1], ports[2]
	cfg.GossipProfile = "local"
	cfg.HeartbeatInterval, cfg.MissedHeartbeats = bc.interval, bc.missed
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "chime", Level: hclog.Warn, Output: logf})
	srv, err := Start(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Shutdown() })
	if err := s.waitLeader(ctx, 30*time.Second); err != nil {
		b.Fatalf("%v\n%s", err, s.logTail())
	}
	return s
}

func (s *benchServer) waitLeader(ctx context.Context, within time.Duration) error {
	c := api.NewClient(s.base)
	c.Retries = 0
	deadline := time.Now().Add(within)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return errors.New("chime server exited")
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.Status(rctx)
		cancel()
		if err != nil {
			last = err.Error()
		} else if st.IsLeader {
			return nil
		} else {
			last = "raft state " + st.State
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("chime server not leader within %s (last: %s)", within, last)
}

// heartbeatsTotal reads chime_heartbeats_total from /metrics.
func (s *benchServer) heartbeatsTotal(ctx context.Context) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, s.base+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "chime_heartbeats_total "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("scrape metrics: %w", err)
	}
	return 0, errors.New("scrape metrics: no chime_heartbeats_total")
}

// logTail returns the end of the server's log, for failure messages.
func (s *benchServer) logTail() string {
	data, err := os.ReadFile(s.log)
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return "server log tail:\n" + string(data)
}

// loadAverage is the 1-minute load average, or "?".
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the user+system CPU time a process has used.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("process cpu: %w", err)
	}
	// The command name (field 2) may contain spaces: count from after ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("process cpu: malformed /proc stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("process cpu: short /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("process cpu: %w", err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// procMemory returns a process's resident set and its peak, in KiB.
func procMemory(pid int) (rss, peak int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("process memory: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, perr := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss, err = kb, perr
		case "VmHWM":
			peak = kb
		}
	}
	if rss == 0 && err == nil {
		err = errors.New("process memory: no VmRSS")
	}
	return rss, peak, err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
