package main

import (
	"strings"
	"testing"
)

func TestRender(t *testing.T) {
	in := `noise
BENCH14 failover chime p50=1.134 p99=1.192 n=10 etcd_p50=2.047 ratio_p50=0.55
    bench_test.go:12: BENCH14 detect chime timing=fast p50=3.2 p99=3.9
BENCH14 detect memberlist config=default-lan p50=5.2 p99=5.4 suspect_p50=1.2
creates: vms=10000  clients=16   376.0 creates/s  p50   25.1 ms  p99   72.0 ms  ok 3008  failed 0
BENCH14 zz x=1
BENCH14 restart n=4 domain=kvm chime p50=426ms virsh_start p50=263ms diff=162ms
BENCH14 creates-etcd vms=0 clients=1 creates_per_s=250.0 p50_ms=3.9 etcd_puts_per_s=600.0 ratio=0.42
    bench_failover_test.go:42: TestBench14FailoverRun failed (exit status 1), no BENCH14 line:
BENCH14 failover no fields
`
	ts := map[string]*table{}
	if err := parse(strings.NewReader(in), ts); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	render(&b, ts, "2 cores", "2026-12-02", "abc123")
	got := b.String()
	for _, want := range []string{
		"Machine: 2 cores. Date: 2026-12-02. Commit: `abc123`.",
		"### 3. Leader `kill -9` → first write accepted, vs etcd\n\n| what | p50 | p99 | n | etcd_p50 | ratio_p50 |\n|---|---:|---:|---:|---:|---:|\n| chime | 1.134 | 1.192 | 10 | 2.047 | 0.55 |\n",
		"| what | timing | p50 | p99 | config | suspect_p50 |",
		"| chime | fast | 3.2 | 3.9 | – | – |",
		"| memberlist | – | 5.2 | 5.4 | default-lan | 1.2 |",
		"| vms | clients | creates_per_s | p50_ms | p99_ms | ok | failed |",
		"| 10000 | 16 | 376.0 | 25.1 | 72.0 | 3008 | 0 |",
		"### zz",
		"| n | domain | chime_p50 | virsh_start_p50 | diff |",
		"| 4 | kvm | 426ms | 263ms | 162ms |",
		"### 4. Write throughput: VM creates (3 `chime server` processes) vs etcd puts, same run, alternating\n\n| vms | clients | creates_per_s | p50_ms | etcd_puts_per_s | ratio |\n|---:|---:|---:|---:|---:|---:|\n| 0 | 1 | 250.0 | 3.9 | 600.0 | 0.42 |\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "### line") || strings.Count(got, "| chime |") != 2 {
		t.Errorf("a line that only names BENCH14 became a row or a table:\n%s", got)
	}
	// The order: failover (3) before creates (4) before detect (5), others last.
	if i, j, k, l := strings.Index(got, "### 3."), strings.Index(got, "### 4. Write throughput: VM creates through"), strings.Index(got, "### 5."), strings.Index(got, "### zz"); !(i < j && j < k && k < l) {
		t.Errorf("tables out of order (%d %d %d %d):\n%s", i, j, k, l, got)
	}
}
