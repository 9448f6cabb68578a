// Package wait is the one polling helper of chime's tests: poll a condition
// until it holds or a deadline passes, then fail with what was last seen.
//
// Tests never sleep to wait for a condition; they call For, whose failure
// message names what was awaited, for how long, and the condition's last
// description of the world.
package wait

import (
	"testing"
	"time"
)

// For polls cond until it reports done or timeout passes; then it fails the
// test with what and cond's last description. It returns how long the wait
// took, so a test can print the figure. The poll period is a fiftieth of the
// timeout, between 10 ms and 100 ms.
func For(t testing.TB, timeout time.Duration, what string, cond func() (done bool, seen string)) time.Duration {
	t.Helper()
	period := min(max(timeout/50, 10*time.Millisecond), 100*time.Millisecond)
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		done, seen := cond()
		if done {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; last seen: %s", what, timeout, seen)
			return 0
		}
		time.Sleep(period)
	}
}
