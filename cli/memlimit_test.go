package cli

import (
	"math"
	"runtime/debug"
	"testing"
)

// TestParseMemoryLimit reads GOMEMLIMIT's syntax and refuses what is not
// a size or below 64 MiB.
func TestParseMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // 0: an error
	}{
		{"768MiB", 768 << 20},
		{"2GiB", 2 << 30},
		{"1TiB", 1 << 40},
		{"65536KiB", 64 << 20},
		{"1073741824", 1 << 30},
		{"1073741824B", 1 << 30},
		{" 1GiB ", 1 << 30},
		{"off", math.MaxInt64},
		{"0", math.MaxInt64},
		{"63MiB", 0},
		{"-1GiB", 0},
		{"1.5GiB", 0},
		{"1GB", 0},
		{"lots", 0},
		{"", 0},
		{"99999999TiB", 0},
	} {
		got, err := parseMemoryLimit(tc.in)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("%q: %d, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

// TestApplyMemoryLimit: a given limit is set in the runtime, an absent one
// leaves the runtime's as it was, a bad one changes nothing.
func TestApplyMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	if got, err := applyMemoryLimit("512MiB", true); err != nil || got != 512<<20 || debug.SetMemoryLimit(-1) != 512<<20 {
		t.Fatalf("512MiB: %d, %v; runtime %d", got, err, debug.SetMemoryLimit(-1))
	}
	if got, err := applyMemoryLimit("", false); err != nil || got != 512<<20 {
		t.Fatalf("not given: %d, %v; want the runtime's 512MiB", got, err)
	}
	if _, err := applyMemoryLimit("12", true); err == nil || debug.SetMemoryLimit(-1) != 512<<20 {
		t.Fatalf("a bad limit: %v; runtime %d", err, debug.SetMemoryLimit(-1))
	}
	if got, err := applyMemoryLimit("off", true); err != nil || got != math.MaxInt64 || debug.SetMemoryLimit(-1) != math.MaxInt64 {
		t.Fatalf("off: %d, %v", got, err)
	}
}
