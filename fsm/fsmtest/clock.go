package fsmtest

import (
	"sync"
	"time"
)

// Start is the time a World's clock reads until the test moves it.
var Start = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// Clock is a clock only the test moves: the proposer stamps commands with
// Now and the code under test measures its timeouts against it, so a
// timeout passes exactly when the test says. It is safe for concurrent
// use, since the code under test may read it from its own goroutines.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock reading start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock d forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
