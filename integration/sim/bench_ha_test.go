package sim

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/server/recovery"
)

// BenchmarkHADeath is the simulator's figure for automatic HA
// (docs/benchmarks.md): for each timing (seed: 15 s heartbeats, fast:
// 1 s; both 3 missed) and each path (isolation lease, fence command) it
// runs -sim.ha.runs seeded node deaths and reports p50/p99 of the
// simulated time from the power loss to the node unreachable, to fenced,
// and to every ha VM of the dead host running on one other host, read
// from the simulated hypervisors. Each seed draws the victim, how many ha
// VMs it holds and where in the heartbeat period the power goes, so the
// runs sample the detection's phase; a seed's figures are always the
// same (TestHADeathDeterministic).
//
//	go test -run '^$' -bench BenchmarkHADeath -benchtime 1x ./integration/sim
var flagHARuns = flag.Int("sim.ha.runs", 20, "node deaths per timing and path in BenchmarkHADeath")

// haTiming is one timing of the benchmark: the servers' heartbeat
// interval (3 missed) and the agents' isolation lease on the lease path.
type haTiming struct {
	name     string
	interval time.Duration
	lease    time.Duration
	// margin and stopBound are the servers' --isolation-lease-margin and
	// the agents' --isolation-stop-bound (0: the defaults, 10 s each).
	margin, stopBound time.Duration
	leaseOnly         bool // the fence path is the same as another timing's
}

// The leases: 20 s at seed timing (the ha- scenarios'; the servers' lease
// deadline, 40 s, falls before the 45 s detection), 5 s at fast timing
// (TestAutoHA's; its deadline is 17.5 s with the default margin, 8.5 s
// with a margin of 1 s and agents that stop their VMs within 1 s).
var haTimings = []haTiming{
	{name: "seed", interval: 15 * time.Second, lease: 20 * time.Second},
	{name: "fast", interval: time.Second, lease: 5 * time.Second},
	{name: "fast-margin1s", interval: time.Second, lease: 5 * time.Second, margin: time.Second, stopBound: time.Second, leaseOnly: true},
}

// deathFigures is one node death's timeline, from the power loss.
type deathFigures struct {
	victim      string
	vms         int           // ha VMs on the victim
	phase       time.Duration // power loss after the boot's VMs ran
	unreachable time.Duration // node.unreachable event
	fenced      time.Duration // fence.succeeded, or the first ha.restarted on the lease
	elsewhere   time.Duration // every ha VM of the victim runs on one other host
}

func (d deathFigures) String() string {
	return fmt.Sprintf("%s (%d ha VMs, phase %s): unreachable %s, fenced %s, elsewhere %s",
		d.victim, d.vms, d.phase, d.unreachable, d.fenced, d.elsewhere)
}

// haDeath runs one seeded node death: three hosts, 3 to 8 ha VMs of mixed
// priority and one without ha, then the power loss of a host holding ha
// VMs. It fails on any invariant violation or if the VMs are not all
// elsewhere within 5 minutes.
func haDeath(seed uint64, tm haTiming, path string) (deathFigures, uint64, error) {
	var d deathFigures
	r := rand.New(rand.NewPCG(seed, 0xbe7c))
	ha := &HAOptions{}
	switch path {
	case "lease":
		ha.Lease, ha.Margin, ha.StopBound = tm.lease, tm.margin, tm.stopBound
	case "fence":
		ha.Fence = true
	default:
		return d, 0, fmt.Errorf("path %q: want lease or fence", path)
	}
	s, err := New(Config{Seed: seed, Hosts: 3, HA: ha, Cluster: ClusterConfig{HeartbeatInterval: tm.interval}})
	if err != nil {
		return d, 0, err
	}
	defer s.Close()
	s.E.RunFor(BootTime)
	n := 3 + r.IntN(6)
	prios := []string{"high", "medium", "low"}
	for i := range n {
		if err := s.Ops.CreateHA(fmt.Sprintf("vm%d", i+1), prios[r.IntN(len(prios))]); err != nil {
			return d, 0, fmt.Errorf("create vm%d: %w", i+1, err)
		}
	}
	if err := s.Ops.Create("plain", 1, 512, false); err != nil {
		return d, 0, fmt.Errorf("create plain: %w", err)
	}
	// Settle, then a phase in the heartbeat period (millisecond steps).
	d.phase = time.Duration(r.Int64N(int64(tm.interval/time.Millisecond))) * time.Millisecond
	s.E.RunFor(30*time.Second + d.phase)

	ids := map[string]bool{}
	for _, w := range s.Ops.Writes {
		if w.VMID != "" && strings.HasPrefix(w.Flag, "ha") {
			ids[w.VMID] = true
		}
	}
	if len(ids) != n {
		return d, 0, fmt.Errorf("%d of %d ha VMs created", len(ids), n)
	}
	where := func() map[string][]string {
		out := map[string][]string{}
		for _, h := range s.Hosts {
			for _, q := range h.HV.Running() {
				if ids[q.UUID] {
					out[q.UUID] = append(out[q.UUID], h.Name)
				}
			}
		}
		return out
	}
	var holders []*Host
	before := where()
	for _, h := range s.Hosts {
		for id := range ids {
			if slices.Equal(before[id], []string{h.Name}) {
				holders = append(holders, h)
				break
			}
		}
	}
	for id := range ids {
		if len(before[id]) != 1 {
			return d, 0, fmt.Errorf("before the power loss vm %s runs on %v", id, before[id])
		}
	}
	if len(holders) == 0 {
		return d, 0, fmt.Errorf("no host runs an ha VM")
	}
	victim := holders[r.IntN(len(holders))]
	d.victim = victim.Name
	var onVictim []string
	for id := range ids {
		if before[id][0] == victim.Name {
			onVictim = append(onVictim, id)
		}
	}
	slices.Sort(onVictim)
	d.vms = len(onVictim)

	t0 := s.E.Now()
	var done time.Time
	s.E.OnEachEvent(func() {
		if !done.IsZero() {
			return
		}
		now := where()
		for _, id := range onVictim {
			if len(now[id]) != 1 || now[id][0] == victim.Name {
				return
			}
		}
		done = s.E.Now()
	})
	if err := s.Exec([]string{"power-off", victim.Name}); err != nil {
		return d, 0, err
	}
	for i := 0; i < 300 && done.IsZero(); i++ {
		s.E.RunFor(time.Second)
	}
	if done.IsZero() {
		return d, 0, fmt.Errorf("%s: not every ha VM running elsewhere 5m after the power loss: %v", victim.Name, where())
	}
	s.E.RunFor(10 * time.Second) // and still once each
	if s.Check.Failed() {
		return d, 0, fmt.Errorf("invariants broken: %v", s.Check.Violations)
	}
	d.elsewhere = done.Sub(t0)
	l := s.Cluster.leader
	if l == nil {
		return d, 0, fmt.Errorf("no leader")
	}
	evs, err := l.FSM.Events(0, 100000)
	if err != nil {
		return d, 0, err
	}
	for _, e := range evs {
		if e.NodeID != victim.nodeID || e.Time.Before(t0) {
			continue
		}
		at := e.Time.Sub(t0)
		switch {
		case e.Kind == "node.unreachable" && d.unreachable == 0:
			d.unreachable = at
		case e.Kind == "fence.succeeded" && path == "fence" && d.fenced == 0:
			d.fenced = at
		case e.Kind == recovery.EventRestarted && path == "lease" && d.fenced == 0:
			d.fenced = at // the lease's expiry is decided at the first restart
		}
	}
	if d.unreachable == 0 || d.fenced == 0 {
		return d, 0, fmt.Errorf("%s: no node.unreachable or fence evidence in the event log", victim.Name)
	}
	want := map[string]string{"lease": "isolation lease expired", "fence": "fence command succeeded"}[path]
	restarted := 0
	for _, e := range evs {
		if e.Kind == recovery.EventRestarted && e.NodeID == victim.nodeID && !e.Time.Before(t0) {
			if !strings.Contains(e.Message, want) {
				return d, 0, fmt.Errorf("ha.restarted names the wrong evidence (want %q): %s", want, e.Message)
			}
			restarted++
		}
	}
	if restarted != len(onVictim) {
		return d, 0, fmt.Errorf("%d ha.restarted events for %d ha VMs", restarted, len(onVictim))
	}
	return d, s.E.trace.Hash(), nil
}

// percentile is the nearest-rank percentile p (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func BenchmarkHADeath(b *testing.B) {
	if *flagHARuns < 1 {
		b.Fatalf("-sim.ha.runs %d: at least 1", *flagHARuns)
	}
	for _, tm := range haTimings {
		for _, path := range []string{"lease", "fence"} {
			if tm.leaseOnly && path != "lease" {
				continue
			}
			b.Run(tm.name+"/"+path, func(b *testing.B) {
				var unr, fen, els []time.Duration
				for range b.N {
					unr, fen, els = nil, nil, nil
					for i := range *flagHARuns {
						seed := uint64(i + 1)
						d, _, err := haDeath(seed, tm, path)
						if err != nil {
							b.Fatalf("seed %d: %v", seed, err)
						}
						b.Logf("seed %d: %s", seed, d)
						unr, fen, els = append(unr, d.unreachable), append(fen, d.fenced), append(els, d.elsewhere)
					}
				}
				for _, m := range []struct {
					name string
					ds   []time.Duration
				}{{"unreachable", unr}, {"fenced", fen}, {"elsewhere", els}} {
					b.ReportMetric(percentile(m.ds, 50).Seconds(), m.name+"-p50-s")
					b.ReportMetric(percentile(m.ds, 99).Seconds(), m.name+"-p99-s")
				}
				b.Logf("HA-DEATH sim %s timing (%s heartbeats, 3 missed, margin %s), %s path, %d runs: power loss → unreachable p50 %s p99 %s, → fenced p50 %s p99 %s, → every ha VM elsewhere p50 %s p99 %s (max %s)",
					tm.name, tm.interval, (&HAOptions{Margin: tm.margin}).margin(), path, len(els), percentile(unr, 50), percentile(unr, 99),
					percentile(fen, 50), percentile(fen, 99), percentile(els, 50), percentile(els, 99), slices.Max(els))
			})
		}
	}
}

// TestHADeathDeterministic: a seed's node death has the same figures and
// trace every time (the benchmark's figures replay).
func TestHADeathDeterministic(t *testing.T) {
	tm := haTimings[1]
	a, ha, err := haDeath(3, tm, "fence")
	if err != nil {
		t.Fatal(err)
	}
	b, hb, err := haDeath(3, tm, "fence")
	if err != nil {
		t.Fatal(err)
	}
	if a != b || ha != hb {
		t.Fatalf("seed 3 ran twice: %s (trace %x) and %s (trace %x)", a, ha, b, hb)
	}
	if a.elsewhere < a.fenced || a.fenced < a.unreachable {
		t.Errorf("phases out of order: %s", a)
	}
	t.Logf("seed 3, fast timing, fence path: %s", a)
}
