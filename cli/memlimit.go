package cli

import (
	"fmt"
	"math"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryUnits are the suffixes --memory-limit takes, as GOMEMLIMIT does.
var memoryUnits = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}

// parseMemoryLimit reads a --memory-limit value: bytes, or a number with
// one of B, KiB, MiB, GiB, TiB (GOMEMLIMIT's syntax); "off" or 0 is no
// limit (math.MaxInt64, what debug.SetMemoryLimit takes for it).
func parseMemoryLimit(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		return math.MaxInt64, nil
	}
	num, shift := s, uint(0)
	for _, u := range memoryUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = n, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("--memory-limit %q: want a size such as 768MiB or 2GiB, or off", s)
	}
	n <<= shift
	if n < 64<<20 {
		return 0, fmt.Errorf("--memory-limit %q: at least 64MiB", s)
	}
	return n, nil
}

// applyMemoryLimit sets the Go runtime's soft memory limit from
// --memory-limit when it is given; without it the runtime keeps its own
// (GOMEMLIMIT from the environment, or none). It returns the limit now in
// force (math.MaxInt64: none).
func applyMemoryLimit(value string, given bool) (int64, error) {
	if !given {
		return debug.SetMemoryLimit(-1), nil
	}
	n, err := parseMemoryLimit(value)
	if err != nil {
		return 0, err
	}
	debug.SetMemoryLimit(n)
	return n, nil
}
