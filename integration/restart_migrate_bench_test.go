package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// Issue 14, benchmarks 1 and 2, on real libvirt in the lab (a fleet: three
// servers, an agent per host), each against the thing underneath it in the
// same run, alternating sample by sample:
//
//   - BenchmarkRestartVsVirsh: `kill -9` of a chime VM's qemu → libvirt
//     reports the domain started again (its lifecycle event, on a
//     connection of the benchmark's own), against `virsh start` of an
//     identical stopped domain without chime metadata (which the agent
//     never touches) on the same host → its started event, and against
//     the libvirt API's create (virDomainCreate) of the same.
//   - BenchmarkMigrateVsVirsh: `chime vm migrate --to` → the domain
//     resumed on the destination (its resumed/migrated event), against
//     `virsh migrate --live --p2p --persistent --undefinesource` of an
//     identical domain between the same two hosts with the same migration
//     URIs. Guest downtime: from the source's suspended/migrated event
//     (libvirt paused the guest for the switch-over) to the destination's
//     resumed/migrated event, both received by this process on one clock.
//     (virDomainGetJobStats with VIR_DOMAIN_JOB_STATS_COMPLETED, or virsh
//     domjobinfo --completed, reports no job on the destination after a
//     p2p migration with --undefinesource on libvirt 9.0, and no
//     job-completed event arrives: the events are what there is.)
//
// Each prints one parsable line (BENCH14 restart … / BENCH14 migrate …).
// CHIME_BENCH_SAMPLES sets the samples per series (default 12; 4 with
// CHIME_BENCH_QUICK=1). Root and a lab are needed, as for the fleet tests;
// plain `go test` never runs them:
//
//	CI=true CHIME_FLEET_PREFIX=chimeb go test -run '^$' -bench 'BenchmarkRestartVsVirsh|BenchmarkMigrateVsVirsh' -benchtime 1x -timeout 1h ./integration
//
// The fleet helpers take a *testing.T, so each benchmark re-runs the test
// binary on TestBench14Run (skipped unless CHIME_BENCH14_RUN is set), which
// prints the samples and the summary.
func BenchmarkRestartVsVirsh(b *testing.B) { bench14(b, "restart") }

// BenchmarkMigrateVsVirsh: see BenchmarkRestartVsVirsh.
func BenchmarkMigrateVsVirsh(b *testing.B) { bench14(b, "migrate") }

// bench14 runs TestBench14Run for what in a child process, relays its
// BENCH14 lines and reports the medians as metrics.
func bench14(b *testing.B, what string) {
	if os.Getenv("CHIME_BENCH14_RUN") != "" || os.Getenv("CHIME_AUTOHA_RUN") != "" {
		b.Skip("inside a run")
	}
	for range b.N {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestBench14Run$", "-test.v", "-test.count=1", "-test.timeout=50m")
		cmd.Env = append(os.Environ(), "CHIME_BENCH14_RUN="+what)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		samples := map[string][]time.Duration{}
		summary := ""
		sc := bufio.NewScanner(&out)
		for sc.Scan() {
			l := sc.Text()
			if i := strings.Index(l, "BENCH14-SAMPLE "); i >= 0 {
				f := strings.Fields(l[i:])
				if len(f) == 4 && f[1] == what {
					if s, err := strconv.ParseFloat(f[3], 64); err == nil {
						samples[f[2]] = append(samples[f[2]], time.Duration(s*float64(time.Second)))
					}
				}
				b.Log(l[i:])
			}
			if i := strings.Index(l, "BENCH14 "); i >= 0 {
				summary = l[i:]
			}
		}
		if err != nil || summary == "" {
			tail := out.String()
			if len(tail) > 6000 {
				tail = tail[len(tail)-6000:]
			}
			b.Fatalf("%s run failed (%v), no summary:\n%s", what, err, tail)
		}
		for _, series := range slices.Sorted(maps.Keys(samples)) {
			b.ReportMetric(nearestRank(samples[series], 50).Seconds(), series+"-p50-s")
		}
		fmt.Println(summary)
	}
}

// bench14Samples is the number of samples per series.
func bench14Samples(t *testing.T) int {
	n := 12
	if os.Getenv("CHIME_BENCH_QUICK") == "1" {
		n = 4
	}
	if v := os.Getenv("CHIME_BENCH_SAMPLES"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 1 {
			t.Fatalf("CHIME_BENCH_SAMPLES=%q: a number ≥ 1 expected", v)
		}
		n = k
	}
	return n
}

// TestBench14Run is one run of BenchmarkRestartVsVirsh or
// BenchmarkMigrateVsVirsh (CHIME_BENCH14_RUN=restart|migrate).
func TestBench14Run(t *testing.T) {
	what := os.Getenv("CHIME_BENCH14_RUN")
	switch what {
	case "":
		t.Skip("a run of BenchmarkRestartVsVirsh / BenchmarkMigrateVsVirsh (set by the benchmark)")
	case "restart":
		startOrphanReaper(t)
		benchRestart(t, newFleet(t), bench14Samples(t))
	case "migrate":
		startOrphanReaper(t)
		benchMigrate(t, newFleet(t), bench14Samples(t))
	default:
		t.Fatalf("CHIME_BENCH14_RUN=%q: want restart or migrate", what)
	}
}

// startOrphanReaper makes this process the subreaper of the lab it starts
// and reaps the lab's daemons and qemu processes as soon as they exit, as
// systemd (pid 1 of a real hypervisor) does. libvirtd reports a killed
// qemu stopped only once its pid is gone (it polls kill(pid, 0), which a
// zombie still answers); the pid 1 of the machines this runs on reaps
// orphans only every 1–2 s, which would be measured as libvirt's crash
// handling. CHIME_BENCH_NO_REAPER=1 leaves the orphans to pid 1 and
// measures that. Only qemu zombies that are children of this process are
// reaped: qemu is never a child this process started, whereas the lab's
// daemons (libvirtd -d forks and exits) may be, and exec.Cmd's Wait must
// reap those. The daemons' own zombies, once the lab is down, stay until
// this process exits.
func startOrphanReaper(t *testing.T) {
	if os.Getenv("CHIME_BENCH_NO_REAPER") == "1" {
		t.Log("no orphan reaper: the lab's qemu processes are reaped by pid 1")
		return
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
	}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGCHLD)
	stop := make(chan struct{})
	done := make(chan struct{})
	me := strconv.Itoa(os.Getpid())
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-sig:
			case <-tick.C:
			}
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
				if err != nil {
					continue
				}
				// pid (comm) state ppid ...
				i := bytes.LastIndexByte(stat, ')')
				j := bytes.IndexByte(stat, '(')
				if i < 0 || j < 0 {
					continue
				}
				f := strings.Fields(string(stat[i+1:]))
				if len(f) < 2 || f[0] != "Z" || f[1] != me || !strings.HasPrefix(string(stat[j+1:i]), "qemu-system") {
					continue
				}
				var ws syscall.WaitStatus
				_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		signal.Stop(sig)
	})
}

// sample prints one figure for the parent benchmark.
func sample(what, series string, d time.Duration) {
	fmt.Printf("BENCH14-SAMPLE %s %s %.4f\n", what, series, d.Seconds())
}

// dist formats p50 (and p99 when there are at least 10 samples) of ds.
func dist(name string, ds []time.Duration) string {
	s := fmt.Sprintf("%s p50=%s", name, nearestRank(ds, 50).Round(time.Millisecond))
	if len(ds) >= 10 {
		s += fmt.Sprintf(" p99=%s", nearestRank(ds, 99).Round(time.Millisecond))
	}
	return s
}

// benchRestart alternates kill -9 of the chime VM's qemu with virsh start
// and the API's create of an identical foreign domain on the same host.
func benchRestart(t *testing.T, f *fleet, n int) {
	vm := f.createVM(t, "bench-restart")
	hi, _, _ := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	h := f.lab.Hosts[hi]
	w := watchLifecycle(t, h)
	w.awaitRunning(t, vm.ID)
	floorName, floorID := defineTwin(t, f, h, vm.ID, "bench-floor")
	t.Logf("restart benchmark on %s (domain type %s): chime VM %s, twin %s %s, %d samples each", h.Name, lab.DomainType(), vm.ID, floorName, floorID, n)

	var chime, reaped, stopped, reaction, agentCall, virsh, api []time.Duration
	// Warm-up: one start of the twin, so that no series pays a first start.
	w.create(t, floorID)
	w.await(t, floorID, libvirt.DomainEventStarted, -1, 60*time.Second)
	w.destroy(t, floorID)
	chimeSample := func() {
		// chime: kill -9 → started again.
		w.awaitRunning(t, vm.ID)
		pid := qemuPID(t, h, vm.ID)
		w.drain()
		t0 := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill qemu %d: %v", pid, err)
		}
		gone := pidGone(pid)
		tStop := w.await(t, vm.ID, libvirt.DomainEventStopped, -1, 30*time.Second)
		tStart := w.await(t, vm.ID, libvirt.DomainEventStarted, -1, 60*time.Second)
		tGone := <-gone
		chime = append(chime, tStart.Sub(t0))
		stopped = append(stopped, tStop.Sub(t0))
		reaped = append(reaped, tGone.Sub(t0))
		reaction = append(reaction, tStart.Sub(tStop))
		sample("restart", "chime", tStart.Sub(t0))
		sample("restart", "crash-to-reaped", tGone.Sub(t0))
		sample("restart", "crash-to-stopped-event", tStop.Sub(t0))
		sample("restart", "stopped-event-to-started", tStart.Sub(tStop))
		// The agent's trace: its log line just before it calls Start.
		tCall := lastLogTime(t, f.agents[hi].log, "starting domain", "reason=crashed", "vm="+vm.ID)
		agentCall = append(agentCall, tCall.Sub(tStop))
		sample("restart", "stopped-event-to-agent-start-call", tCall.Sub(tStop))
	}
	floorSamples := func() {
		// virsh start of the twin.
		w.drain()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		t0 := time.Now()
		if out, err := h.Virsh(ctx, "start", floorName); err != nil {
			cancel()
			t.Fatalf("virsh start %s: %v %s", floorName, err, out)
		}
		cancel()
		tStart := w.await(t, floorID, libvirt.DomainEventStarted, -1, 60*time.Second)
		virsh = append(virsh, tStart.Sub(t0))
		sample("restart", "virsh-start", tStart.Sub(t0))
		w.destroy(t, floorID)

		// The API's create of the twin, on the benchmark's connection.
		w.drain()
		t0 = time.Now()
		w.create(t, floorID)
		tStart = w.await(t, floorID, libvirt.DomainEventStarted, -1, 60*time.Second)
		api = append(api, tStart.Sub(t0))
		sample("restart", "api-create", tStart.Sub(t0))
		w.destroy(t, floorID)
	}
	for i := range n {
		// Alternate the order too: whatever goes first in a round pays for
		// the agent's after-work of the round before.
		if i%2 == 0 {
			chimeSample()
			floorSamples()
		} else {
			floorSamples()
			chimeSample()
		}
		t.Logf("sample %d: chime %s (qemu pid gone %s, stopped event %s, agent's start call %s later, started %s after the event), virsh start %s, api create %s", i+1,
			chime[i].Round(time.Millisecond), reaped[i].Round(time.Millisecond), stopped[i].Round(time.Millisecond),
			agentCall[i].Round(time.Millisecond), reaction[i].Round(time.Millisecond),
			virsh[i].Round(time.Millisecond), api[i].Round(time.Millisecond))
		// Let the agent's after-work (its early heartbeat) finish before the next kill.
		time.Sleep(500 * time.Millisecond)
	}
	c, v, a := nearestRank(chime, 50), nearestRank(virsh, 50), nearestRank(api, 50)
	fmt.Printf("BENCH14 restart n=%d domain=%s reaper=%t %s %s %s %s %s %s %s diff=%s ratio=%.2f diff_api=%s\n", n, lab.DomainType(),
		os.Getenv("CHIME_BENCH_NO_REAPER") != "1",
		dist("chime", chime), dist("virsh_start", virsh), dist("api_create", api),
		dist("crash_to_reaped", reaped), dist("crash_to_stopped_event", stopped),
		dist("stopped_event_to_agent_start_call", agentCall), dist("stopped_event_to_started", reaction),
		(c - v).Round(time.Millisecond), c.Seconds()/v.Seconds(), (c - a).Round(time.Millisecond))
}

// benchMigrate alternates chime vm migrate of a chime VM with virsh
// migrate of an identical foreign domain, back and forth between the
// same two hosts.
func benchMigrate(t *testing.T, f *fleet, n int) {
	vm := f.createVM(t, "bench-mig")
	src, _, _ := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	dst := (src + 1) % len(f.lab.Hosts)
	hosts := [2]*lab.Host{f.lab.Hosts[src], f.lab.Hosts[dst]}
	watch := [2]*lifecycleWatch{watchLifecycle(t, hosts[0]), watchLifecycle(t, hosts[1])}
	watch[0].awaitRunning(t, vm.ID)
	f.waitVMState(t, vm.Name, structs.StateRunning)
	nodes, err := f.nodeList()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]structs.Node{}
	for _, nd := range nodes {
		byName[nd.Name] = nd
	}
	twinName, twinID := defineTwin(t, f, hosts[0], vm.ID, "bench-mig-raw")
	watch[0].create(t, twinID)
	watch[0].await(t, twinID, libvirt.DomainEventStarted, -1, 60*time.Second)
	t.Logf("migrate benchmark %s ↔ %s (domain type %s): chime VM %s, twin %s %s, %d samples each", hosts[0].Name, hosts[1].Name, lab.DomainType(), vm.ID, twinName, twinID, n)

	var chime, chimeCall, chimeDone, raw, chimeDown, rawDown []time.Duration
	agentOf := [2]*proc{f.agents[src], f.agents[dst]}
	migrateTwin := func(from, to int) time.Time {
		dest := byName[hosts[to].Name]
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		out, err := hosts[from].Virsh(ctx, "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
			twinName, dest.MigrationURI, "--migrateuri", "tcp://"+dest.MigrationAddr)
		if err != nil {
			t.Fatalf("virsh migrate %s to %s: %v %s", twinName, hosts[to].Name, err, out)
		}
		return watch[to].await(t, twinID, libvirt.DomainEventResumed, int32(libvirt.DomainEventResumedMigrated), 120*time.Second)
	}
	// Warm-up: the twin there and back, so that no series pays for the
	// first incoming migration of a host.
	watch[1].drain()
	migrateTwin(0, 1)
	watch[0].drain()
	migrateTwin(1, 0)
	for i := range n {
		from, to := i%2, (i+1)%2
		dest := byName[hosts[to].Name]
		chimeSample := func() {
			// chime vm migrate → resumed on the destination.
			watch[from].drain()
			watch[to].drain()
			t0 := time.Now()
			if _, err := f.chime("vm", "migrate", vm.ID, "--to", dest.ID); err != nil {
				t.Fatal(err)
			}
			tRun := watch[to].await(t, vm.ID, libvirt.DomainEventResumed, int32(libvirt.DomainEventResumedMigrated), 120*time.Second)
			chime = append(chime, tRun.Sub(t0))
			sample("migrate", "chime", tRun.Sub(t0))
			down := tRun.Sub(watch[from].await(t, vm.ID, libvirt.DomainEventSuspended, int32(libvirt.DomainEventSuspendedMigrated), 10*time.Second))
			chimeDown = append(chimeDown, down)
			sample("migrate", "chime-downtime", down)
			// The source agent's trace: its log line just before it asks libvirt to migrate.
			tCall := lastLogTime(t, agentOf[from].log, "migrating domain", "uuid="+vm.ID)
			chimeCall = append(chimeCall, tCall.Sub(t0))
			sample("migrate", "chime-command-to-libvirt-migrate-call", tCall.Sub(t0))
			// The task is over when the servers record the VM on the destination.
			wait.For(t, 60*time.Second, "migration of "+vm.ID+" recorded", func() (bool, string) {
				var got structs.VM
				if err := f.chimeJSON(&got, "vm", "show", vm.ID); err != nil {
					return false, err.Error()
				}
				return got.Migration == nil && got.NodeID == dest.ID && got.TaskID == "", fmt.Sprintf("node %s, migration %v, task %q", got.NodeID, got.Migration, got.TaskID)
			})
			chimeDone = append(chimeDone, time.Since(t0))
			sample("migrate", "chime-task-done", time.Since(t0))
		}
		virshSample := func() {
			// virsh migrate of the twin, same hosts, same URIs.
			watch[from].drain()
			watch[to].drain()
			t0 := time.Now()
			tRun := migrateTwin(from, to)
			raw = append(raw, tRun.Sub(t0))
			sample("migrate", "virsh", tRun.Sub(t0))
			down := tRun.Sub(watch[from].await(t, twinID, libvirt.DomainEventSuspended, int32(libvirt.DomainEventSuspendedMigrated), 10*time.Second))
			rawDown = append(rawDown, down)
			sample("migrate", "virsh-downtime", down)
		}
		if i%2 == 0 {
			chimeSample()
			virshSample()
		} else {
			virshSample()
			chimeSample()
		}
		t.Logf("sample %d %s → %s: chime %s (libvirt called after %s, task done %s, downtime %s), virsh %s (downtime %s)", i+1, hosts[from].Name, hosts[to].Name,
			chime[i].Round(time.Millisecond), chimeCall[i].Round(time.Millisecond), chimeDone[i].Round(time.Millisecond), chimeDown[i].Round(time.Millisecond),
			raw[i].Round(time.Millisecond), rawDown[i].Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
	}
	c, r := nearestRank(chime, 50), nearestRank(raw, 50)
	fmt.Printf("BENCH14 migrate n=%d domain=%s memory=64MiB %s %s %s %s overhead=%s ratio=%.2f %s %s\n", n, lab.DomainType(),
		dist("chime", chime), dist("chime_command_to_libvirt_call", chimeCall), dist("chime_task_done", chimeDone), dist("virsh", raw),
		(c - r).Round(time.Millisecond), c.Seconds()/r.Seconds(),
		dist("chime_downtime", chimeDown), dist("virsh_downtime", rawDown))
}

// lastLogTime is the timestamp of the last line of the log at path (an
// hclog file of a chime process) that contains every one of subs.
func lastLogTime(t *testing.T, path string, subs ...string) time.Time {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !allIn(l, subs) {
			continue
		}
		stamp, _, _ := strings.Cut(l, " ")
		at, err := time.Parse("2006-01-02T15:04:05.000Z07:00", stamp)
		if err != nil {
			t.Fatalf("log line %q of %s: %v", l, path, err)
		}
		return at
	}
	t.Fatalf("no line with %q in %s", subs, path)
	return time.Time{}
}

func allIn(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// pidGone polls (every 2 ms, at most 30 s) until process pid is gone from
// /proc (a zombie counts as there: reaped is gone) and sends when.
func pidGone(pid int) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		path := "/proc/" + strconv.Itoa(pid)
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			if _, err := os.Stat(path); err != nil {
				break
			}
		}
		ch <- time.Now()
	}()
	return ch
}

// qemuPID is the pid of uuid's qemu on h, waiting (bounded) for one.
func qemuPID(t *testing.T, h *lab.Host, id string) int {
	t.Helper()
	pid := 0
	wait.For(t, 30*time.Second, "qemu of "+id+" on "+h.Name, func() (bool, string) {
		procs, err := h.QemuProcesses(context.Background())
		if err != nil {
			return false, err.Error()
		}
		pid = procs[id]
		return pid != 0, "no qemu process"
	})
	return pid
}

var (
	reName     = regexp.MustCompile(`<name>[^<]*</name>`)
	reUUID     = regexp.MustCompile(`<uuid>[^<]*</uuid>`)
	reMetadata = regexp.MustCompile(`(?s)<metadata>.*?</metadata>\s*`)
)

// defineTwin defines on h a domain identical to chime VM id's (its
// inactive XML) under another name and UUID and without chime metadata,
// so that no agent touches it, and returns its name and UUID. It is
// stopped.
func defineTwin(t *testing.T, f *fleet, h *lab.Host, id, name string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x, err := h.Virsh(ctx, "dumpxml", "--inactive", id)
	if err != nil {
		t.Fatalf("virsh dumpxml %s: %v", id, err)
	}
	twin := uuid.NewString()
	x = reName.ReplaceAllString(x, "<name>"+name+"</name>")
	x = reUUID.ReplaceAllString(x, "<uuid>"+twin+"</uuid>")
	x = reMetadata.ReplaceAllString(x, "")
	path := filepath.Join(f.root, name+".xml")
	if err := os.WriteFile(path, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Virsh(ctx, "define", path); err != nil {
		t.Fatalf("virsh define %s on %s: %v %s", path, h.Name, err, out)
	}
	return name, twin
}

// lifecycleWatch is the benchmark's own libvirt connection to one host:
// lifecycle events stamped on arrival, and the calls the floor makes.
type lifecycleWatch struct {
	lv     *libvirt.Libvirt
	host   string
	events chan stampedEvent
}

type stampedEvent struct {
	uuid          string
	event, detail int32
	at            time.Time
}

func watchLifecycle(t *testing.T, h *lab.Host) *lifecycleWatch {
	t.Helper()
	lv := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(h.LibvirtSocket()), dialers.WithLocalTimeout(10*time.Second)))
	if err := lv.ConnectToURI(libvirt.QEMUSystem); err != nil {
		t.Fatalf("connect to libvirt of %s: %v", h.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := lv.LifecycleEvents(ctx)
	if err != nil {
		cancel()
		t.Fatalf("lifecycle events of %s: %v", h.Name, err)
	}
	w := &lifecycleWatch{lv: lv, host: h.Name, events: make(chan stampedEvent, 1024)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for msg := range ch {
			ev := stampedEvent{uuid: uuid.UUID(msg.Dom.UUID).String(), event: msg.Event, detail: msg.Detail, at: time.Now()}
			select {
			case w.events <- ev:
			default: // nobody waits for this many: drop
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		_ = lv.Disconnect()
		wg.Wait()
	})
	return w
}

// drain forgets the events received so far.
func (w *lifecycleWatch) drain() {
	for {
		select {
		case <-w.events:
		default:
			return
		}
	}
}

// await waits for event (and detail, unless -1) of domain id and returns
// when it arrived.
func (w *lifecycleWatch) await(t *testing.T, id string, event libvirt.DomainEventType, detail int32, timeout time.Duration) time.Time {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev := <-w.events:
			if ev.uuid == id && ev.event == int32(event) && (detail < 0 || ev.detail == detail) {
				return ev.at
			}
		case <-timer.C:
			t.Fatalf("no lifecycle event %d/%d of %s on %s within %s", event, detail, id, w.host, timeout)
		}
	}
}

// awaitRunning waits until libvirt says domain id is running (booted,
// not merely starting up: a qemu killed while libvirt starts it fails
// the start instead of crashing).
func (w *lifecycleWatch) awaitRunning(t *testing.T, id string) {
	t.Helper()
	dom := w.lookup(t, id)
	wait.For(t, 60*time.Second, "domain "+id+" running on "+w.host, func() (bool, string) {
		st, reason, err := w.lv.DomainGetState(dom, 0)
		if err != nil {
			return false, err.Error()
		}
		return libvirt.DomainState(st) == libvirt.DomainRunning && reason == int32(libvirt.DomainRunningBooted),
			fmt.Sprintf("state %d reason %d", st, reason)
	})
	// A domain just started is still in libvirt's start job a moment.
	time.Sleep(time.Second)
}

func (w *lifecycleWatch) lookup(t *testing.T, id string) libvirt.Domain {
	t.Helper()
	u, err := uuid.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	dom, err := w.lv.DomainLookupByUUID(libvirt.UUID(u))
	if err != nil {
		t.Fatalf("lookup %s on %s: %v", id, w.host, err)
	}
	return dom
}

// create is virDomainCreate of the stopped domain id (the lookup first,
// the create and its event are what the floor times).
func (w *lifecycleWatch) create(t *testing.T, id string) {
	t.Helper()
	if err := w.lv.DomainCreate(w.lookup(t, id)); err != nil {
		t.Fatalf("create %s on %s: %v", id, w.host, err)
	}
}

// destroy stops domain id and waits for its stopped event.
func (w *lifecycleWatch) destroy(t *testing.T, id string) {
	t.Helper()
	w.drain()
	if err := w.lv.DomainDestroy(w.lookup(t, id)); err != nil {
		t.Fatalf("destroy %s on %s: %v", id, w.host, err)
	}
	w.await(t, id, libvirt.DomainEventStopped, -1, 30*time.Second)
}
