// Package clock is the agent's time: the Clock its packages read the time
// and set their timers through, the wall clock, and a manual clock that
// moves only when told. Injecting it is what lets tests and the simulator
// (integration/sim) step the agent in simulated time, one call at a time.
package clock

import (
	"context"
	"time"
)

// Clock is a source of time and timers. Every package of the agent declares
// the subset it uses; Wall and *Manual implement all of it.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer whose channel receives once d has passed.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker whose channel receives every d.
	NewTicker(d time.Duration) Ticker
	// AfterFunc calls f once d has passed, never before AfterFunc returns
	// and never while the caller holds AfterFunc's own locks: on the wall
	// clock in a goroutine of its own, on a Manual clock on the goroutine
	// that advances it. The returned Timer's C is nil.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a one-shot timer. Stop reports whether it stopped the timer
// before it fired (as time.Timer.Stop does).
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// Ticker is a periodic timer.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Wall is the wall clock (package time).
type Wall struct{}

// Now returns time.Now().
func (Wall) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (Wall) NewTimer(d time.Duration) Timer { return wallTimer{time.NewTimer(d)} }

// NewTicker returns a time.Ticker.
func (Wall) NewTicker(d time.Duration) Ticker { return wallTicker{time.NewTicker(d)} }

// AfterFunc is time.AfterFunc.
func (Wall) AfterFunc(d time.Duration, f func()) Timer { return wallTimer{time.AfterFunc(d, f)} }

type wallTimer struct{ t *time.Timer }

func (t wallTimer) C() <-chan time.Time { return t.t.C }
func (t wallTimer) Stop() bool          { return t.t.Stop() }

type wallTicker struct{ t *time.Ticker }

func (t wallTicker) C() <-chan time.Time { return t.t.C }
func (t wallTicker) Stop()               { t.t.Stop() }

// TimerMaker is the part of a Clock Sleep needs.
type TimerMaker interface {
	NewTimer(d time.Duration) Timer
}

// Sleep waits d on c's time. It returns false when ctx ended first.
func Sleep(ctx context.Context, c TimerMaker, d time.Duration) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// Backoff is the agent's retry delay after attempt failures: 1 s doubling
// to 30 s. Registration, the desired-state watch and migration reports all
// retry on it.
func Backoff(attempt int) time.Duration {
	return min(time.Second<<min(attempt, 5), 30*time.Second)
}
