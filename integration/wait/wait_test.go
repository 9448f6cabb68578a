package wait

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that records a failure instead of stopping.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestFor(t *testing.T) {
	tests := []struct {
		name     string
		after    int // the condition holds from this call on (0: never)
		timeout  time.Duration
		wantFail bool
	}{
		{"holds at once", 1, time.Second, false},
		{"holds on the third poll", 3, 5 * time.Second, false},
		{"never holds", 0, 200 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{TB: t}
			calls := 0
			took := For(r, tt.timeout, "the thing", func() (bool, string) {
				calls++
				return tt.after > 0 && calls >= tt.after, fmt.Sprintf("call %d", calls)
			})
			if tt.wantFail {
				if !strings.Contains(r.failed, "the thing") || !strings.Contains(r.failed, fmt.Sprintf("call %d", calls)) {
					t.Fatalf("failure %q does not name what was awaited and the last seen state", r.failed)
				}
				return
			}
			if r.failed != "" || calls != tt.after {
				t.Fatalf("failed=%q calls=%d, want success after %d calls", r.failed, calls, tt.after)
			}
			if took < 0 || took > tt.timeout {
				t.Fatalf("took %s, outside [0, %s]", took, tt.timeout)
			}
		})
	}
}
