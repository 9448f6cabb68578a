package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestProcStatusBytes reads kB lines of /proc/PID/status as bytes.
func TestProcStatusBytes(t *testing.T) {
	status := "Name:\tchime\nVmHWM:\t  823344 kB\nVmRSS:\t  800000 kB\nRssAnon:\t  700000 kB\nRssFile:\t   99000 kB\nThreads:\t12\n"
	for _, tc := range []struct {
		name string
		want int64
	}{
		{"VmRSS", 800000 << 10},
		{"RssAnon", 700000 << 10},
		{"RssFile", 99000 << 10},
		{"VmHWM", 823344 << 10},
		{"Threads", 12 << 10}, // no unit: read as kB all the same
		{"RssShmem", 0},       // absent
		{"Name", 0},           // not a number
	} {
		if got := procStatusBytes(status, tc.name); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestWriteMemStats: one line per interval until ctx ends, every key
// present, the resident set and the heap objects non-zero, the anonymous and
// file parts not above the whole.
func TestWriteMemStats(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	var buf bytes.Buffer
	if err := writeMemStats(ctx, &buf, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("%d lines in 250 ms at 20 ms:\n%s", len(lines), buf.String())
	}
	for _, line := range lines {
		v := map[string]int64{}
		for _, f := range strings.Fields(line) {
			k, s, ok := strings.Cut(f, "=")
			n, err := strconv.ParseInt(s, 10, 64)
			if !ok || err != nil {
				t.Fatalf("field %q of %q", f, line)
			}
			v[k] = n
		}
		for _, k := range append([]string{"t"}, keysOf()...) {
			if _, ok := v[k]; !ok {
				t.Fatalf("no %s in %q", k, line)
			}
		}
		if v["rss"] <= 0 || v["objects"] <= 0 || v["goal"] < v["live"] || v["total"] <= 0 {
			t.Fatalf("implausible sample %q", line)
		}
		if v["anon"] > v["rss"] || v["file"] > v["rss"] {
			t.Fatalf("anon or file above rss: %q", line)
		}
	}
}

func keysOf() []string {
	var ks []string
	for _, k := range procStatusKeys {
		ks = append(ks, k.key)
	}
	for _, k := range memStatKeys {
		ks = append(ks, k.key)
	}
	return ks
}

// TestRunWithMemProfile: the heap profile is written once ctx ends and
// before the context given to run does (while the server still holds its
// state), and run's error is returned.
func TestRunWithMemProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "heap.pprof")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	var sizeAtEnd int64 = -1
	err := runWithMemProfile(ctx, path, func(rctx context.Context) error {
		<-rctx.Done()
		if st, err := os.Stat(path); err == nil {
			sizeAtEnd = st.Size()
		}
		return context.Canceled
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run's error: %v", err)
	}
	if sizeAtEnd <= 0 {
		t.Fatalf("profile size when run's context ended: %d", sizeAtEnd)
	}
}
