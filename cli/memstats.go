package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// memStatKeys are the runtime/metrics samples of one --mem-stats line, by
// the key the line gives them: the live heap after the last GC, the heap's
// objects (live and not yet swept), the free space of in-use spans, the
// free spans not returned to the OS, the spans returned, the goroutine
// stacks, everything the runtime mapped, the GC's heap goal, and the GC
// cycles so far.
var memStatKeys = []struct{ key, name string }{
	{"live", "/gc/heap/live:bytes"},
	{"objects", "/memory/classes/heap/objects:bytes"},
	{"unused", "/memory/classes/heap/unused:bytes"},
	{"free", "/memory/classes/heap/free:bytes"},
	{"released", "/memory/classes/heap/released:bytes"},
	{"stacks", "/memory/classes/heap/stacks:bytes"},
	{"total", "/memory/classes/total:bytes"},
	{"goal", "/gc/heap/goal:bytes"},
	{"limit", "/gc/gomemlimit:bytes"},
	{"cycles", "/gc/cycles/total:gc-cycles"},
}

// procStatusKeys are the /proc/self/status lines of one --mem-stats line
// (kB there, bytes here): the resident set, its anonymous part (the Go
// heap, stacks), its file-backed part (the binary, bbolt's mmap of the
// state file) and its shared memory, and the peak resident set.
var procStatusKeys = []struct{ key, name string }{
	{"rss", "VmRSS"},
	{"anon", "RssAnon"},
	{"file", "RssFile"},
	{"shmem", "RssShmem"},
	{"hwm", "VmHWM"},
}

// writeMemStats appends one line to w every interval until ctx ends
// (`chime server --mem-stats`, for the scale benchmark of
// docs/benchmarks.md): `t=UNIX_MS key=BYTES ...` with the keys of
// procStatusKeys and memStatKeys. Reading runtime/metrics stops no
// goroutine, so the sampling does not disturb what it measures.
func writeMemStats(ctx context.Context, w io.Writer, interval time.Duration) error {
	samples := make([]metrics.Sample, len(memStatKeys))
	for i, k := range memStatKeys {
		samples[i].Name = k.name
	}
	bw := bufio.NewWriter(w)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		metrics.Read(samples)
		var line strings.Builder
		fmt.Fprintf(&line, "t=%d", time.Now().UnixMilli())
		status, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return fmt.Errorf("mem stats: %w", err)
		}
		for _, k := range procStatusKeys {
			fmt.Fprintf(&line, " %s=%d", k.key, procStatusBytes(string(status), k.name))
		}
		for i, k := range memStatKeys {
			var v uint64
			if samples[i].Value.Kind() == metrics.KindUint64 {
				v = samples[i].Value.Uint64()
			}
			fmt.Fprintf(&line, " %s=%d", k.key, v)
		}
		line.WriteByte('\n')
		if _, err := bw.WriteString(line.String()); err != nil {
			return fmt.Errorf("mem stats: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("mem stats: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// procStatusBytes returns the value of a `NAME:   123 kB` line of
// /proc/PID/status in bytes, or 0 without such a line.
func procStatusBytes(status, name string) int64 {
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != name {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}

// startMemStats opens path and starts writeMemStats on it, once a second;
// the returned function stops it, closes the file and says whether
// writing failed.
func startMemStats(ctx context.Context, path string) (func() error, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("mem stats: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- writeMemStats(ctx, f, time.Second) }()
	return func() error {
		cancel()
		werr := <-done
		if cerr := f.Close(); werr == nil && cerr != nil {
			werr = fmt.Errorf("mem stats: %w", cerr)
		}
		return werr
	}, nil
}
