package sim

import "time"

// The clocks the production code reads. Each is a view of the world's
// simulated time; a server's may be offset (skew), as the wall clocks of
// three machines are.

// skewedClock is one machine's clock: simulated time plus a fixed offset.
// It implements heartbeat.Clock, tasks.Clock, alarms.Clock and
// endpoint.Clock.
type skewedClock struct {
	w    *Engine
	skew *time.Duration // shared with its owner, which may change it (a clock jump)
}

// Now is the machine's wall clock.
func (c skewedClock) Now() time.Time { return c.w.Now().Add(*c.skew) }

// After returns a channel that receives the time once d of simulated time
// has passed (the endpoints bound their waits for agents with it).
func (c skewedClock) After(d time.Duration) <-chan time.Time {
	return newSimTimer(c.w, "", d, 0, nil).C()
}

// simTimer is a one-shot timer or a ticker on simulated time. Its channel
// holds one value; a tick nobody took is dropped, as with package time.
type simTimer struct {
	w      *Engine
	c      chan time.Time
	ev     *Event
	period time.Duration // 0: one-shot
	f      func()        // AfterFunc: called instead of sending
}

func newSimTimer(w *Engine, name string, d, period time.Duration, f func()) *simTimer {
	t := &simTimer{w: w, period: period, f: f}
	if f == nil {
		t.c = make(chan time.Time, 1)
	}
	t.arm(name, d)
	return t
}

func (t *simTimer) arm(name string, d time.Duration) {
	t.ev = t.w.After(d, name, func() {
		if t.period > 0 {
			t.arm(name, t.period)
		}
		if t.f != nil {
			t.f()
			return
		}
		select {
		case t.c <- t.w.Now():
		default:
		}
	})
}

// C is the timer's channel (nil for an AfterFunc).
func (t *simTimer) C() <-chan time.Time { return t.c }

// Stop disarms the timer and reports whether it was still armed.
func (t *simTimer) Stop() bool {
	armed := t.ev.Pending()
	t.ev.Cancel()
	return armed
}
