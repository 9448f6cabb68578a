package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Issue 14's benchmarks print one summary line each, starting with
// "BENCH14 ", as space-separated key=value fields after the benchmark's
// name and subject (scripts/benchtable turns them into the tables of
// docs/benchmarks.md). Durations are in seconds.

// benchQuick reports whether CHIME_BENCH_QUICK=1 asks for the quick mode
// (every issue-14 benchmark together within 10 minutes on 2 cores).
func benchQuick() bool { return os.Getenv("CHIME_BENCH_QUICK") == "1" }

// benchCount is the env variable name as a positive integer, else quick in
// the quick mode and full otherwise.
func benchCount(t testing.TB, name string, quick, full int) int {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: a number ≥ 1 expected", name, v)
		}
		return n
	}
	if benchQuick() {
		return quick
	}
	return full
}

// secs formats d in seconds with millisecond resolution.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }

// pctFields is "p50=… p99=… max=… n=…" of ds, prefixed (e.g. "chime_").
func pctFields(prefix string, ds []time.Duration) string {
	if len(ds) == 0 {
		return prefix + "n=0"
	}
	return fmt.Sprintf("%sp50=%s %sp99=%s %smax=%s %sn=%d", prefix, secs(nearestRank(ds, 50)), prefix, secs(nearestRank(ds, 99)),
		prefix, secs(slices.Max(ds)), prefix, len(ds))
}

// progressLine is a t.Logf line of the benchmarks' own files.
var progressLine = regexp.MustCompile(`^\s+bench_\w+_test\.go:\d+: `)

// benchChild runs the test binary on test (a Test… function that skips
// unless env is set) with env=val, prints its BENCH14 lines and its
// benchmark files' t.Logf lines (the progress of a long run) to stdout,
// and returns the BENCH14 lines. The integration
// helpers take a *testing.T, hence the child process (as BenchmarkAutoHA).
func benchChild(b *testing.B, test, env, val string, timeout time.Duration) []string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^"+test+"$", "-test.v", "-test.count=1", "-test.timeout="+timeout.String())
	cmd.Env = append(os.Environ(), env+"="+val)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var out bytes.Buffer
	var lines []string
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			out.WriteString(l + "\n")
			if i := strings.Index(l, "BENCH14 "); i >= 0 {
				lines = append(lines, l[i:])
			} else if progressLine.MatchString(l) {
				fmt.Println(l) // the child's own t.Logf lines: progress of a long run
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	<-scanned
	if err != nil || len(lines) == 0 {
		tail := out.String()
		if len(tail) > 6000 {
			tail = tail[len(tail)-6000:]
		}
		b.Fatalf("%s failed (%v), no BENCH14 line:\n%s", test, err, tail)
	}
	for _, l := range lines {
		fmt.Println(l)
	}
	return lines
}
