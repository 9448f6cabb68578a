package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkAutoHA is TestAutoHA's power loss repeated for the figures of
// docs/benchmarks.md: CHIME_BENCH_HA_RUNS runs (default 3) per set-up —
// fast timing (1 s heartbeats) on the lease path (with the default 10 s
// margin, "fast", and with a 1 s margin and 1 s stop bound, "fastm") and
// the fence-command path,
// seed timing (15 s heartbeats) on the fence-command path and, with
// CHIME_BENCH_HA_SEED_LEASE=1, on the lease path — each on a fresh fleet
// of real libvirt hosts with the uniqueness checker polling throughout,
// and prints p50/p99/max of power loss → unreachable, → fenced, → every
// ha VM running elsewhere. CHIME_BENCH_HA_SETUPS (e.g. "fast/fence")
// picks set-ups. It needs root, like the fleet tests; plain `go test`
// never runs it:
//
//	CI=true CHIME_FLEET_PREFIX=chimeb go test -run '^$' -bench BenchmarkAutoHA -benchtime 1x -timeout 2h ./integration
//
// The fleet helpers take a *testing.T, so each run is the test binary
// itself re-run on TestAutoHARun (skipped unless the benchmark sets
// CHIME_AUTOHA_RUN), which prints its figures on one line.
func BenchmarkAutoHA(b *testing.B) {
	if os.Getenv("CHIME_AUTOHA_RUN") != "" {
		b.Skip("inside a run")
	}
	runs := 3
	if v := os.Getenv("CHIME_BENCH_HA_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("CHIME_BENCH_HA_RUNS=%q: a number ≥ 1 expected", v)
		}
		runs = n
	}
	setups := []string{"fast/lease", "fastm/lease", "fast/fence", "seed/fence"}
	if os.Getenv("CHIME_BENCH_HA_SEED_LEASE") == "1" {
		setups = append(setups, "seed/lease")
	}
	if v := os.Getenv("CHIME_BENCH_HA_SETUPS"); v != "" {
		setups = strings.Split(v, ",")
	}
	for _, setup := range setups {
		b.Run(setup, func(b *testing.B) {
			var unr, fen, els []time.Duration
			for range b.N {
				unr, fen, els = nil, nil, nil
				for i := range runs {
					f, err := autoHARun(setup)
					if err != nil {
						b.Fatalf("%s run %d: %v", setup, i+1, err)
					}
					b.Logf("%s run %d: unreachable %s, fenced %s, elsewhere %s", setup, i+1, f.unreachable, f.fenced, f.elsewhere)
					unr, fen, els = append(unr, f.unreachable), append(fen, f.fenced), append(els, f.elsewhere)
				}
			}
			line := fmt.Sprintf("HA-LAB %s, %d runs:", setup, len(els))
			for _, m := range []struct {
				name string
				ds   []time.Duration
			}{{"unreachable", unr}, {"fenced", fen}, {"elsewhere", els}} {
				b.ReportMetric(nearestRank(m.ds, 50).Seconds(), m.name+"-p50-s")
				b.ReportMetric(nearestRank(m.ds, 99).Seconds(), m.name+"-p99-s")
				line += fmt.Sprintf(" → %s p50 %s p99 %s max %s;", m.name, nearestRank(m.ds, 50), nearestRank(m.ds, 99), slices.Max(m.ds))
			}
			b.Log(line)
			fmt.Println(line)
		})
	}
}

// autoHARun runs one power loss (TestAutoHARun) in a child test process.
func autoHARun(setup string) (haFigures, error) {
	var f haFigures
	cmd := exec.Command(os.Args[0], "-test.run", "^TestAutoHARun$", "-test.v", "-test.count=1", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), "CHIME_AUTOHA_RUN="+setup)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	sc := bufio.NewScanner(&out)
	found := false
	for sc.Scan() {
		l := sc.Text()
		if i := strings.Index(l, "AUTOHA-FIGURES "); i >= 0 {
			var a, b, c float64
			if _, err := fmt.Sscanf(l[i:], "AUTOHA-FIGURES %g %g %g", &a, &b, &c); err != nil {
				return f, fmt.Errorf("parse %q: %w", l, err)
			}
			sec := func(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }
			f, found = haFigures{unreachable: sec(a), fenced: sec(b), elsewhere: sec(c)}, true
		}
	}
	if err != nil || !found {
		tail := out.String()
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return f, fmt.Errorf("run failed (%v), no figures:\n%s", err, tail)
	}
	return f, nil
}

// TestAutoHARun is one run of BenchmarkAutoHA (CHIME_AUTOHA_RUN=timing/path).
func TestAutoHARun(t *testing.T) {
	setup := os.Getenv("CHIME_AUTOHA_RUN")
	if setup == "" {
		t.Skip("a run of BenchmarkAutoHA (set by the benchmark)")
	}
	timing, path, _ := strings.Cut(setup, "/")
	tm, ok := map[string]haTiming{"fast": fastTiming, "seed": seedTiming, "fastm": fastMarginTiming}[timing]
	if !ok || (path != "lease" && path != "fence") {
		t.Fatalf("CHIME_AUTOHA_RUN=%q: want fast|fastm|seed/lease|fence", setup)
	}
	f := autoHA(t, path, buildLabctl(t), tm)
	if !t.Failed() {
		fmt.Printf("AUTOHA-FIGURES %.3f %.3f %.3f\n", f.unreachable.Seconds(), f.fenced.Seconds(), f.elsewhere.Seconds())
	}
}

// nearestRank is the nearest-rank percentile p (0..100) of ds.
func nearestRank(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}
