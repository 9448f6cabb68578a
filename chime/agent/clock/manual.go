package clock

import (
	"sync"
	"time"
)

// Manual is a clock that moves only when Advance is called. Timers,
// tickers and AfterFunc callbacks due by then fire in the order of their
// due time, ties in the order they were set; callbacks run on the
// goroutine that calls Advance, without the clock's lock held, so they may
// set new timers (one due within the same Advance fires in it too). A
// timer's or ticker's channel holds one value; a tick nobody took is
// dropped, as with package time. Everything due at the current time
// (AfterFunc(0, f) included) fires on the next Advance, Advance(0) too.
// Its methods are safe for concurrent use, but determinism needs a single
// caller.
type Manual struct {
	mu      sync.Mutex
	now     time.Time
	seq     uint64              // order of creation, the tie-break between equal due times
	pending map[uint64]*waiting // armed timers, tickers and callbacks
}

// waiting is one armed timer, ticker or callback of a Manual clock.
type waiting struct {
	m      *Manual
	id     uint64
	at     time.Time     // next due time
	period time.Duration // ticker period (0: one-shot)
	c      chan time.Time
	f      func() // AfterFunc callback (nil: a channel timer or ticker)
}

// NewManual returns a manual clock reading start.
func NewManual(start time.Time) *Manual {
	return &Manual{now: start, pending: map[uint64]*waiting{}}
}

// Now returns the clock's current time.
func (m *Manual) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// NewTimer returns a timer due d from now.
func (m *Manual) NewTimer(d time.Duration) Timer {
	return m.arm(d, 0, make(chan time.Time, 1), nil)
}

// NewTicker returns a ticker firing every d (d must be positive).
func (m *Manual) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker period")
	}
	return manualTicker{m.arm(d, d, make(chan time.Time, 1), nil)}
}

type manualTicker struct{ w *waiting }

func (t manualTicker) C() <-chan time.Time { return t.w.c }
func (t manualTicker) Stop()               { t.w.Stop() }

// AfterFunc arms f to be called by the Advance that reaches now+d.
func (m *Manual) AfterFunc(d time.Duration, f func()) Timer {
	return m.arm(d, 0, nil, f)
}

func (m *Manual) arm(d, period time.Duration, c chan time.Time, f func()) *waiting {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	w := &waiting{m: m, id: m.seq, at: m.now.Add(max(d, 0)), period: period, c: c, f: f}
	m.pending[w.id] = w
	return w
}

// C is the timer's or ticker's channel (nil for an AfterFunc).
func (w *waiting) C() <-chan time.Time { return w.c }

// Stop disarms it and reports whether it was still armed.
func (w *waiting) Stop() bool {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	_, armed := w.m.pending[w.id]
	delete(w.m.pending, w.id)
	return armed
}

// Next returns the due time of the earliest armed timer, ticker or
// callback; ok is false when none is armed. A simulator advances to it.
func (m *Manual) Next() (at time.Time, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.earliestLocked(); w != nil {
		return w.at, true
	}
	return time.Time{}, false
}

// Advance moves the clock d forward, firing what falls due on the way.
func (m *Manual) Advance(d time.Duration) {
	m.mu.Lock()
	target := m.now.Add(max(d, 0))
	for {
		w := m.earliestLocked()
		if w == nil || w.at.After(target) {
			break
		}
		if w.at.After(m.now) {
			m.now = w.at
		}
		if w.period > 0 {
			w.at = w.at.Add(w.period)
		} else {
			delete(m.pending, w.id)
		}
		if w.f != nil {
			m.mu.Unlock()
			w.f()
			m.mu.Lock()
			continue
		}
		select {
		case w.c <- m.now:
		default: // the last value was not taken: dropped, as package time does
		}
	}
	if target.After(m.now) {
		m.now = target
	}
	m.mu.Unlock()
}

func (m *Manual) earliestLocked() *waiting {
	var first *waiting
	for _, w := range m.pending {
		if first == nil || w.at.Before(first.at) || w.at.Equal(first.at) && w.id < first.id {
			first = w
		}
	}
	return first
}
