package sim

import (
	"container/heap"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"time"
)

// Epoch is where every simulated run's clock starts. A fixed instant, so
// that the times written into commands (and so into the trace) are the
// same in every run of a seed.
var Epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Engine is one simulated run: the event queue that is its time, the
// seeded random source every random choice is drawn from, and the trace.
// It is single-threaded: events run one after another on the goroutine
// that calls Step, and nothing else runs meanwhile.
type Engine struct {
	now   time.Time
	seq   uint64     // order of scheduling: the tie-break between events due at the same time
	queue eventQueue // pending events
	rand  *rand.Rand // every random choice of the run
	trace *Trace
	steps uint64 // events run so far

	// afterEvent runs after every event (the invariant checker).
	afterEvent []func()
}

// NewEngine returns a world at Epoch whose random choices come from seed.
func NewEngine(seed uint64) *Engine {
	w := &Engine{now: Epoch, rand: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	w.trace = newTrace(w)
	return w
}

// Now is the simulated time.
func (w *Engine) Now() time.Time { return w.now }

// Elapsed is the simulated time since Epoch.
func (w *Engine) Elapsed() time.Duration { return w.now.Sub(Epoch) }

// Rand is the run's random source. Draw from it only in the simulated
// path: the order of draws is part of the run.
func (w *Engine) Rand() *rand.Rand { return w.rand }

// Trace is the run's trace.
func (w *Engine) Trace() *Trace { return w.trace }

// Steps is the number of events run so far.
func (w *Engine) Steps() uint64 { return w.steps }

// Event is one scheduled piece of work. Cancel keeps it from running.
type Event struct {
	at        time.Time
	seq       uint64
	name      string // shown in the trace; "" for events that are not traced
	fn        func()
	cancelled bool
	index     int // in the heap
}

// Cancel keeps the event from running; it is a no-op once it ran.
func (e *Event) Cancel() {
	if e != nil {
		e.cancelled = true
	}
}

// Pending reports whether the event is still to run.
func (e *Event) Pending() bool { return e != nil && !e.cancelled && e.index >= 0 }

// At is when the event is due.
func (e *Event) At() time.Time { return e.at }

// After schedules fn to run d from now (d < 0 counts as 0). Events due at
// the same time run in the order they were scheduled. A named event is
// written to the trace when it runs.
func (w *Engine) After(d time.Duration, name string, fn func()) *Event {
	if d < 0 {
		d = 0
	}
	w.seq++
	e := &Event{at: w.now.Add(d), seq: w.seq, name: name, fn: fn}
	heap.Push(&w.queue, e)
	return e
}

// OnEachEvent adds a function run after every event.
func (w *Engine) OnEachEvent(fn func()) { w.afterEvent = append(w.afterEvent, fn) }

// Next is when the next pending event is due; ok is false when none is.
func (w *Engine) Next() (time.Time, bool) {
	for w.queue.Len() > 0 {
		e := w.queue[0]
		if !e.cancelled {
			return e.at, true
		}
		heap.Pop(&w.queue)
	}
	return time.Time{}, false
}

// Step runs the next pending event, then the per-event hooks. It returns
// false when the queue is empty.
func (w *Engine) Step() bool {
	for w.queue.Len() > 0 {
		e := heap.Pop(&w.queue).(*Event)
		if e.cancelled {
			continue
		}
		w.now = e.at
		w.steps++
		if e.name != "" {
			w.trace.Add("event", e.name)
		}
		e.fn()
		for _, fn := range w.afterEvent {
			fn()
		}
		return true
	}
	return false
}

// RunUntil runs every event due up to t, then sets the clock to t.
func (w *Engine) RunUntil(t time.Time) {
	for {
		at, ok := w.Next()
		if !ok || at.After(t) {
			break
		}
		w.Step()
	}
	if t.After(w.now) {
		w.now = t
	}
}

// RunFor runs the world for d of simulated time.
func (w *Engine) RunFor(d time.Duration) { w.RunUntil(w.now.Add(d)) }

// Every schedules fn every period, the first time after first. The
// returned stop function cancels the next run.
func (w *Engine) Every(first, period time.Duration, name string, fn func()) (stop func()) {
	var ev *Event
	stopped := false
	var tick func()
	tick = func() {
		if stopped {
			return
		}
		ev = w.After(period, name, tick)
		fn()
	}
	ev = w.After(first, name, tick)
	return func() {
		stopped = true
		ev.Cancel()
	}
}

// ID returns a fresh UUID-formatted id from the run's random source.
func (w *Engine) ID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], w.rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], w.rand.Uint64())
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// RandReader is an io.Reader over the run's random source (for code that
// takes one: the agent's ids and secrets).
type RandReader struct{ w *Engine }

// Read fills p from the run's random source.
func (r RandReader) Read(p []byte) (int, error) {
	for i := 0; i < len(p); i += 8 {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], r.w.rand.Uint64())
		copy(p[i:], b[:])
	}
	return len(p), nil
}

// eventQueue is a min-heap of events by (time, sequence).
type eventQueue []*Event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *eventQueue) Push(x any) {
	e := x.(*Event)
	e.index = len(*q)
	*q = append(*q, e)
}
func (q *eventQueue) Pop() any {
	old := *q
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.index = -1
	*q = old[:n-1]
	return e
}
