package server

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// memSample is one line of the server's --mem-stats file (bytes; t in
// Unix milliseconds).
type memSample map[string]int64

// parseMemStats reads the lines of a --mem-stats file; a line cut short
// (the server was writing it) is skipped.
func parseMemStats(data string) []memSample {
	var out []memSample
	for _, line := range strings.Split(data, "\n") {
		s := memSample{}
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				s = nil
				break
			}
			s[k] = n
		}
		_, whole := s["cycles"] // the last key of a line
		if s != nil && whole && s["t"] > 0 && s["rss"] > 0 {
			out = append(out, s)
		}
	}
	return out
}

// heapInuse is the Go heap's in-use spans (MemStats.HeapInuse): objects
// and the free space of their spans.
func (s memSample) heapInuse() int64 { return s["objects"] + s["unused"] }

// phaseMark is when a phase of a benchmark began.
type phaseMark struct {
	name string
	at   time.Time
}

// memPeak is what one phase's samples peaked at: the sample of the
// highest resident set (so that its anonymous and file parts and its heap
// are of the same moment), and each figure's own peak.
type memPeak struct {
	phase   string
	samples int
	atRSS   memSample // the sample with the highest rss
	max     memSample // each key's highest value
}

// memPeaks groups samples by the phase they fall in (marks in order; a
// sample before the first mark is dropped) and returns each phase's peak,
// then one named "all".
func memPeaks(samples []memSample, marks []phaseMark) []memPeak {
	var out []memPeak
	all := memPeak{phase: "all", max: memSample{}}
	for i, m := range marks {
		p := memPeak{phase: m.name, max: memSample{}}
		from := m.at.UnixMilli()
		to := int64(1 << 62)
		if i+1 < len(marks) {
			to = marks[i+1].at.UnixMilli()
		}
		for _, s := range samples {
			if s["t"] < from || s["t"] >= to {
				continue
			}
			for _, q := range []*memPeak{&p, &all} {
				q.samples++
				if q.atRSS == nil || s["rss"] > q.atRSS["rss"] {
					q.atRSS = s
				}
				for k, v := range s {
					q.max[k] = max(q.max[k], v)
				}
				q.max["inuse"] = max(q.max["inuse"], s.heapInuse())
			}
		}
		if p.samples > 0 {
			out = append(out, p)
		}
	}
	if all.samples > 0 {
		out = append(out, all)
	}
	return out
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// String is one line of figures in MiB: at the moment of peak RSS its
// anonymous and file-backed parts, the heap in use, the live heap (after
// the last GC), the free heap not returned to the OS and the GC goal;
// then the phase's peaks of heap in use, live heap and goal.
func (p memPeak) String() string {
	a := p.atRSS
	return fmt.Sprintf("phase=%s samples=%d rss=%.0fMiB anon=%.0fMiB file=%.0fMiB heap_inuse=%.0fMiB live=%.0fMiB idle_unreleased=%.0fMiB goal=%.0fMiB "+
		"peak_inuse=%.0fMiB peak_live=%.0fMiB peak_goal=%.0fMiB peak_stacks=%.0fMiB gc_cycles=%d",
		p.phase, p.samples, mib(a["rss"]), mib(a["anon"]), mib(a["file"]), mib(a.heapInuse()), mib(a["live"]), mib(a["free"]), mib(a["goal"]),
		mib(p.max["inuse"]), mib(p.max["live"]), mib(p.max["goal"]), mib(p.max["stacks"]), p.max["cycles"])
}

// reportMemPeaks prints the server's memory figures per phase from its
// --mem-stats file and returns the whole run's peak (nil without samples).
func reportMemPeaks(srv *benchServer, marks []phaseMark) *memPeak {
	if srv.memStats == "" {
		fmt.Println("scale mem: no --mem-stats samples (server in this process)")
		return nil
	}
	data, err := os.ReadFile(srv.memStats)
	if err != nil {
		fmt.Printf("scale mem: %v\n", err)
		return nil
	}
	var last *memPeak
	for _, p := range memPeaks(parseMemStats(string(data)), marks) {
		fmt.Printf("scale mem: %s\n", p)
		last = &p
	}
	return last
}

// fileMappings sums a process's resident file-backed memory
// (/proc/PID/smaps) per mapped file, base names, largest first: which
// of RssFile is bbolt's mmap of state.db and raft.db and which the binary.
func fileMappings(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, fmt.Errorf("smaps: %w", err)
	}
	return sumMappings(string(data)), nil
}

// sumMappings is fileMappings of the text of an smaps file: "NAME=N MiB"
// for each file whose mappings hold at least 1 MiB resident.
func sumMappings(smaps string) []string {
	kib := map[string]int64{}
	file := ""
	for _, line := range strings.Split(smaps, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			file = "" // a mapping's header: address perms offset dev inode [path]
			if len(f) >= 6 && strings.HasPrefix(f[5], "/") {
				file = f[5][strings.LastIndexByte(f[5], '/')+1:]
			}
		case len(f) >= 2 && f[0] == "Rss:" && file != "":
			n, _ := strconv.ParseInt(f[1], 10, 64)
			kib[file] += n
		}
	}
	names := make([]string, 0, len(kib))
	for k := range kib {
		if kib[k] >= 1024 {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool { return kib[names[i]] > kib[names[j]] })
	out := make([]string, len(names))
	for i, k := range names {
		out[i] = fmt.Sprintf("%s=%.0fMiB", k, float64(kib[k])/1024)
	}
	return out
}

// memFields are the BENCH14 line's memory fields of the whole run's
// peak ("" without samples): at peak RSS its anonymous and file parts and
// the heap in use, and the peaks of heap in use, live heap and GC goal.
func memFields(p *memPeak) string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf(" rss_anon=%.0fMiB rss_file=%.0fMiB heap_inuse_at_rss=%.0fMiB peak_inuse=%.0fMiB peak_live=%.0fMiB peak_goal=%.0fMiB",
		mib(p.atRSS["anon"]), mib(p.atRSS["file"]), mib(p.atRSS.heapInuse()), mib(p.max["inuse"]), mib(p.max["live"]), mib(p.max["goal"]))
}

// TestMemPeaks: samples fall into the phase they were taken in, the peak
// RSS sample is kept whole, each key's maximum is its own, a cut line is
// skipped, and "all" spans every phase.
func TestMemPeaks(t *testing.T) {
	t0 := time.UnixMilli(1_000_000)
	line := func(dt, rss, anon, objects, unused, live int64) string {
		return fmt.Sprintf("t=%d rss=%d anon=%d file=%d objects=%d unused=%d free=0 live=%d goal=%d stacks=1 cycles=%d\n",
			t0.UnixMilli()+dt, rss, anon, rss-anon, objects, unused, live, 2*live, dt)
	}
	data := line(-5, 999, 1, 1, 1, 1) + // before the first mark: dropped
		line(0, 100, 80, 50, 10, 40) +
		line(1000, 120, 90, 40, 30, 45) + // register's peak rss; inuse 70 is its peak too
		line(2000, 110, 95, 60, 5, 50) + // create: anon 95 here, rss peak later
		line(3000, 300, 250, 200, 20, 150) +
		"t=1004000 rss=50 anon=" // cut short by the writer
	marks := []phaseMark{{"register", t0}, {"create", t0.Add(2 * time.Second)}}
	got := memPeaks(parseMemStats(data), marks)
	if len(got) != 3 {
		t.Fatalf("%d peaks, want register, create, all: %v", len(got), got)
	}
	for _, tc := range []struct {
		i                 int
		phase             string
		samples           int
		rss, anon, inuse  int64
		maxAnon, maxInuse int64
	}{
		{0, "register", 2, 120, 90, 70, 90, 70},
		{1, "create", 2, 300, 250, 220, 250, 220},
		{2, "all", 4, 300, 250, 220, 250, 220},
	} {
		p := got[tc.i]
		if p.phase != tc.phase || p.samples != tc.samples || p.atRSS["rss"] != tc.rss || p.atRSS["anon"] != tc.anon ||
			p.atRSS.heapInuse() != tc.inuse || p.max["anon"] != tc.maxAnon || p.max["inuse"] != tc.maxInuse {
			t.Errorf("peak %d: %s %d samples, at rss %v, max %v; want %+v", tc.i, p.phase, p.samples, p.atRSS, p.max, tc)
		}
	}
}

// TestSumMappings: resident kB of an smaps text are summed per file name
// (several mappings of one file add up; anonymous mappings and files
// under 1 MiB are left out), largest first.
func TestSumMappings(t *testing.T) {
	smaps := `5573f0538000-5573f053a000 r--p 00000000 fe:00 247278   /usr/bin/chime
Size:   8 kB
Rss:    1024 kB
5573f053a000-5573f0540000 r-xp 00002000 fe:00 247278   /usr/bin/chime
Rss:    2048 kB
7f0000000000-7f0010000000 r--s 00000000 fe:00 1 /tmp/x/data/state.db
Rss:    204800 kB
7f1000000000-7f1000100000 rw-p 00000000 00:00 0
Rss:    99999 kB
7f2000000000-7f2000100000 r--s 00000000 fe:00 2 /tmp/x/data/raft.db
Rss:    512 kB
7f3000000000-7f3000100000 r--p 00000000 fe:00 3 /lib/libc.so.6
Rss:    1536 kB
`
	got := strings.Join(sumMappings(smaps), " ")
	if want := "state.db=200MiB chime=3MiB libc.so.6=2MiB"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}
