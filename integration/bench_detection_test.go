package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// BenchmarkDetectionVsMemberlist is issue 14's benchmark 5: node death →
// unreachable, in the lab (3 servers, 3 hosts, each a network namespace
// with its own libvirtd and agent), at fast timing (1 s heartbeats × 3)
// and at seed timing (15 s × 3), each on a fresh fleet. A round waits a
// random phase within one heartbeat interval, then fails every host, a
// third of an interval apart (the agents heartbeat in step) — its agent
// frozen (SIGSTOP) in even rounds, its management link cut in odd ones —
// and measures, per host, the time from its failure to
// the first poll (every 100 ms) that shows the node unreachable; then it
// undoes the failure and waits for every node normal again. Against the
// same failure of memberlist alone: five memberlist processes on loopback
// with the default LAN config, one frozen (SIGSTOP) per round; the time to
// suspect and to dead as an in-process member sees it. Then the false
// positives: at fast timing, healthy agents for CHIME_BENCH_LOAD_SECONDS
// (180, quick 45) while stress-ng burns every core; every node must stay
// normal with no node.unreachable event.
//
// Detections: CHIME_BENCH_DETECT_FAST (21 = 7 rounds of 3, quick 6),
// CHIME_BENCH_DETECT_SEED (21, quick 3), CHIME_BENCH_DETECT_ML (20, quick
// 4). Needs root (the lab) like the fleet tests; plain `go test` never
// runs it:
//
//	CI=true CHIME_FLEET_PREFIX=benb go test -run '^$' -bench BenchmarkDetectionVsMemberlist -benchtime 1x -timeout 60m ./integration
//
// It prints BENCH14 detect lines (chime timing=fast|seed, memberlist) and
// a BENCH14 falsepos line.
func BenchmarkDetectionVsMemberlist(b *testing.B) {
	for range b.N {
		benchChild(b, "TestBench14DetectionRun", "CHIME_BENCH14_DETECT", "fast", 30*time.Minute)
		benchChild(b, "TestBench14DetectionRun", "CHIME_BENCH14_DETECT", "seed", 45*time.Minute)
		benchChild(b, "TestBench14MemberlistRun", "CHIME_BENCH14_ML", "1", 20*time.Minute)
	}
}

// TestBench14DetectionRun is one fleet of BenchmarkDetectionVsMemberlist
// (CHIME_BENCH14_DETECT=fast|seed; skipped otherwise).
func TestBench14DetectionRun(t *testing.T) {
	timing := os.Getenv("CHIME_BENCH14_DETECT")
	if timing == "" {
		t.Skip("a run of BenchmarkDetectionVsMemberlist (set by the benchmark)")
	}
	var interval time.Duration
	var n int
	switch timing {
	case "fast":
		interval, n = time.Second, benchCount(t, "CHIME_BENCH_DETECT_FAST", 6, 21)
	case "seed":
		interval, n = 15*time.Second, benchCount(t, "CHIME_BENCH_DETECT_SEED", 3, 21)
	default:
		t.Fatalf("CHIME_BENCH14_DETECT=%q: fast or seed", timing)
	}
	f := newFleetWith(t, fleetOptions{ServerArgs: []string{"--heartbeat-interval", interval.String()}})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i, h := range f.lab.Hosts {
			f.agents[i].signal(syscall.SIGCONT)
			_ = h.SetLink(ctx, lab.NetMgmt, true)
		}
	})
	hosts := len(f.lab.Hosts)
	var all, frozen, cut []time.Duration
	for round := 0; len(all) < n; round++ {
		kind := "sigstop"
		if round%2 == 1 {
			kind = "linkcut"
		}
		time.Sleep(rand.N(interval))
		seq := f.lastEventSeq(t)
		ds := detectRound(t, f, kind, interval, min(hosts, n-len(all)))
		all = append(all, ds...)
		if kind == "sigstop" {
			frozen = append(frozen, ds...)
		} else {
			cut = append(cut, ds...)
		}
		var got []string
		for _, d := range ds {
			got = append(got, d.Round(10*time.Millisecond).String())
		}
		t.Logf("round %d (%s, %s heartbeats): unreachable after %s; events: %s", round+1, kind, interval, strings.Join(got, ", "),
			strings.Join(unreachableEvents(t, f, seq), " | "))
	}
	fmt.Printf("BENCH14 detect chime timing=%s interval=%s missed=3 %s sigstop_p50=%s linkcut_p50=%s\n", timing, interval,
		pctFields("", all), pctOrNA(frozen), pctOrNA(cut))

	if timing == "fast" {
		falsePositives(t, f, time.Duration(benchCount(t, "CHIME_BENCH_LOAD_SECONDS", 45, 180))*time.Second)
	}
}

func pctOrNA(ds []time.Duration) string {
	if len(ds) == 0 {
		return "na"
	}
	return secs(nearestRank(ds, 50))
}

// detectRound fails the first k hosts at once (kind sigstop or linkcut),
// returns each one's time to unreachable, then undoes the failure and
// waits until every node is normal.
func detectRound(t *testing.T, f *fleet, kind string, interval time.Duration, k int) []time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fail := func(i int, down bool) {
		if kind == "sigstop" {
			if down {
				f.agents[i].signal(syscall.SIGSTOP)
			} else {
				f.agents[i].signal(syscall.SIGCONT)
			}
			return
		}
		if err := f.lab.Hosts[i].SetLink(ctx, lab.NetMgmt, !down); err != nil {
			t.Fatal(err)
		}
	}
	// The agents started together and heartbeat in step: fail them a
	// third of an interval apart, so that each detection samples its own
	// phase.
	t0 := make([]time.Time, k)
	for i := range k {
		if i > 0 {
			time.Sleep(interval / time.Duration(k))
		}
		t0[i] = time.Now()
		fail(i, true)
	}
	seen := make([]time.Duration, k)
	left := k
	bound := 3*interval + interval/4 + min(interval, 5*time.Second)
	for left > 0 {
		if time.Since(t0[0]) > 3*bound {
			t.Fatalf("%s: %d of %d nodes not unreachable after %s (3 × the bound %s)", kind, left, k, time.Since(t0[0]).Round(time.Second), bound)
		}
		nodes, err := f.nodesByName()
		now := time.Now()
		if err == nil {
			for i := range k {
				if seen[i] == 0 && nodes[f.lab.Hosts[i].Name].MonitorState == structs.MonitorUnreachable {
					seen[i] = now.Sub(t0[i])
					left--
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range k {
		fail(i, false)
	}
	// A cut link's agent may wait out its HTTP client's back-off.
	f.waitNodesNormal(t, 2*time.Minute)
	return seen
}

// unreachableEvents are the messages of the node.unreachable events
// after seq (the monitor's own account: silence and ping-back).
func unreachableEvents(t *testing.T, f *fleet, seq uint64) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, _, err := f.ss.clientAll().Events(ctx, seq, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ev {
		if e.Kind == "node.unreachable" && e.Seq > seq {
			out = append(out, e.Message)
		}
	}
	return out
}

// falsePositives runs stress-ng on every core for d with the fleet
// healthy, polling the nodes every 500 ms: every node must stay normal,
// and no node.unreachable event may appear.
func falsePositives(t *testing.T, f *fleet, d time.Duration) {
	t.Helper()
	stress, err := exec.LookPath("stress-ng")
	if err != nil {
		t.Fatalf("stress-ng not installed (scripts/install-deps.sh): %v", err)
	}
	f.waitNodesNormal(t, time.Minute)
	seq := f.lastEventSeq(t)
	cmd := exec.Command(stress, "--cpu", "0", "--cpu-method", "matrixprod", "--timeout", strconv.Itoa(int(d.Seconds()))+"s", "--quiet")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })
	polls, notNormal := 0, 0
	var bad []string
	var load1 float64
	for t0 := time.Now(); time.Since(t0) < d; time.Sleep(500 * time.Millisecond) {
		nodes, err := f.nodesByName()
		if err != nil {
			continue // a server slow to answer under load is not a node state
		}
		polls++
		for _, n := range nodes {
			if n.MonitorState != structs.MonitorNormal {
				notNormal++
				bad = append(bad, fmt.Sprintf("%s %s after %s", n.Name, n.MonitorState, time.Since(t0).Round(time.Second)))
			}
		}
		if data, err := os.ReadFile("/proc/loadavg"); err == nil {
			if v, err := strconv.ParseFloat(strings.Fields(string(data))[0], 64); err == nil {
				load1 = max(load1, v)
			}
		}
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
	ev := unreachableEvents(t, f, seq)
	fmt.Printf("BENCH14 falsepos chime timing=fast seconds=%d polls=%d not_normal=%d unreachable_events=%d max_load1=%.1f\n",
		int(d.Seconds()), polls, notNormal, len(ev), load1)
	if notNormal > 0 || len(ev) > 0 {
		t.Errorf("under full CPU load: nodes not normal %v; node.unreachable events %q", bad, ev)
	}
	if polls < int(d/time.Second) {
		t.Errorf("only %d polls answered in %s", polls, d)
	}
}

// TestBench14MemberlistRun is BenchmarkDetectionVsMemberlist's memberlist
// half (CHIME_BENCH14_ML; skipped otherwise): an in-process observer and
// four member processes (the test binary on TestBench14MemberlistNode),
// default LAN config on loopback.
func TestBench14MemberlistRun(t *testing.T) {
	if os.Getenv("CHIME_BENCH14_ML") == "" {
		t.Skip("a run of BenchmarkDetectionVsMemberlist (set by the benchmark)")
	}
	n := benchCount(t, "CHIME_BENCH_DETECT_ML", 4, 20)
	p := ports.Free(t, "127.0.0.1", 5)
	obs := startMember(t, "obs", p[0], "")
	defer obs.Shutdown()
	join := fmt.Sprintf("127.0.0.1:%d", p[0])
	var members []*exec.Cmd
	for i := 1; i < 5; i++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestBench14MemberlistNode$", "-test.timeout=60m")
		cmd.Env = append(os.Environ(), fmt.Sprintf("CHIME_BENCH14_MLNODE=m%d,%d,%s", i, p[i], join))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		members = append(members, cmd)
		t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	}
	allAlive := func(timeout time.Duration) {
		wait.For(t, timeout, "5 memberlist members alive", func() (bool, string) {
			st := obs.NodeStates()
			alive := 0
			for _, s := range st {
				if s == memberlist.StateAlive {
					alive++
				}
			}
			return alive == 5, fmt.Sprint(st)
		})
	}
	allAlive(30 * time.Second)
	var suspect, dead []time.Duration
	for round := range n {
		victim := members[round%len(members)]
		name := fmt.Sprintf("m%d", round%len(members)+1)
		time.Sleep(time.Duration(rand.N(1000)) * time.Millisecond) // a random phase of the 1 s probe interval
		t0 := time.Now()
		_ = syscall.Kill(-victim.Process.Pid, syscall.SIGSTOP)
		var ts time.Duration
		for {
			s, _ := obs.NodeState(name)
			if s == memberlist.StateSuspect && ts == 0 {
				ts = time.Since(t0)
			}
			if s == memberlist.StateDead {
				d := time.Since(t0)
				if ts == 0 {
					ts = d
				}
				suspect, dead = append(suspect, ts), append(dead, d)
				break
			}
			if time.Since(t0) > 2*time.Minute {
				t.Fatalf("memberlist: %s not dead 2 minutes after SIGSTOP", name)
			}
			time.Sleep(10 * time.Millisecond)
		}
		_ = syscall.Kill(-victim.Process.Pid, syscall.SIGCONT)
		t.Logf("round %d: %s suspect after %s, dead after %s", round+1, name, ts.Round(time.Millisecond), dead[len(dead)-1].Round(time.Millisecond))
		allAlive(time.Minute)
		time.Sleep(2 * time.Second)
	}
	fmt.Printf("BENCH14 detect memberlist config=default-lan members=5 %s %s\n", pctFields("", dead), pctFields("suspect_", suspect))
}

// TestBench14MemberlistNode is one member process of
// TestBench14MemberlistRun (CHIME_BENCH14_MLNODE=name,port,join).
func TestBench14MemberlistNode(t *testing.T) {
	spec := os.Getenv("CHIME_BENCH14_MLNODE")
	if spec == "" {
		t.Skip("a member process of BenchmarkDetectionVsMemberlist")
	}
	parts := strings.Split(spec, ",")
	port, _ := strconv.Atoi(parts[1])
	m := startMember(t, parts[0], port, parts[2])
	defer m.Shutdown()
	// Until the parent kills it (or stdin closes when run by hand).
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	time.Sleep(time.Hour)
}

func startMember(t *testing.T, name string, port int, join string) *memberlist.Memberlist {
	t.Helper()
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.BindAddr, c.BindPort = "127.0.0.1", port
	c.AdvertiseAddr, c.AdvertisePort = "127.0.0.1", port
	c.Logger = log.New(io.Discard, "", 0)
	m, err := memberlist.Create(c)
	if err != nil {
		t.Fatalf("memberlist %s: %v", name, err)
	}
	if join != "" {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := m.Join([]string{join}); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("memberlist %s: join %s: %v", name, join, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return m
}
