package sim

import (
	"context"
	"errors"
	"time"

	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// `chime vm restart`: the endpoint stops the VM, waits until its agent
// reports it stopped (blocking on the FSM's Changed channel, bounded by
// its clock's After), then starts it. In the single-threaded simulator
// nothing could answer a request that blocks, so a restart runs as a
// coroutine: a goroutine that runs only while the engine waits for it.
// It parks at every wait (the endpoint's Changed call) and the engine
// resumes it after an event that applied a change or fired its timeout,
// then waits until it parks again or returns. Exactly one of the two runs
// at any moment, and the channel the parked endpoint selects on is ready
// alone when it is resumed (a closed channel for a change, the timeout's
// for the timeout), so the run stays a function of the seed.

// coroutine is one parked or running restart.
type coroutine struct {
	park    chan struct{}  // the goroutine parked (at Changed)
	done    chan struct{}  // the goroutine returned
	resume  chan coMode    // the engine lets it go on
	timeout chan time.Time // its clock's After channel
	fired   bool           // the After's time passed (not yet delivered)
	f       *fsm.FSM       // the state it waits on
	index   uint64         // the FSM's index when it parked
	onDone  func()         // what the engine runs once it returned
	onReset func()         // what the engine runs when its server crashes (the client's connection reset)
}

type coMode int

const (
	coChanged coMode = iota // something was applied: Changed returns a closed channel
	coTimeout               // the timeout passed: Changed returns a channel never closed
)

// coroutines is the simulator's set of restarts in progress.
type coroutines struct {
	running *coroutine   // the one running now (nil: the engine runs)
	parked  []*coroutine // in the order they parked
}

var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// spawn runs fn as a coroutine until it first parks or returns; then
// returns to the caller (the engine). onDone runs on the engine's side
// once fn has returned.
func (s *Sim) spawn(f *fsm.FSM, fn func(), onDone, onReset func()) {
	co := &coroutine{park: make(chan struct{}), done: make(chan struct{}), resume: make(chan coMode), f: f, onReset: onReset}
	go func() {
		defer close(co.done)
		// Wait to be let go: only then is co the running coroutine, so
		// that its first wait parks (without this the goroutine could
		// reach its first Changed before runCo set s.co.running, and block
		// on the real FSM's channel while the engine waits for it to park).
		<-co.resume
		fn()
	}()
	start := coChanged
	s.runCo(co, onDone, &start)
}

// runCo lets co run (resumed with *mode; a new one is let go with it too)
// and waits until it parks or returns. co is the running coroutine
// before it is let go: it reads that at its next wait.
func (s *Sim) runCo(co *coroutine, onDone func(), mode *coMode) {
	prev := s.co.running
	s.co.running = co
	if mode != nil {
		co.resume <- *mode
	}
	select {
	case <-co.park:
		s.co.parked = append(s.co.parked, co)
		co.onDone = onDone
	case <-co.done:
		s.co.running = prev
		onDone()
		return
	}
	s.co.running = prev
}

// resumeParked runs after every event: a parked coroutine whose timeout
// fired or whose FSM applied something goes on.
func (s *Sim) resumeParked() {
	for i := 0; i < len(s.co.parked); {
		co := s.co.parked[i]
		mode := coChanged
		_, idx := co.f.Changed()
		switch {
		case co.fired:
			mode = coTimeout
		case idx != co.index:
		default:
			i++
			continue
		}
		s.co.parked = append(s.co.parked[:i], s.co.parked[i+1:]...)
		if mode == coTimeout {
			co.timeout <- s.E.Now()
			co.fired = false
		}
		onDone := co.onDone
		co.onDone = nil
		s.runCo(co, onDone, &mode)
		i = 0 // the list may have changed: look again from the start
	}
}

// resetCoroutines answers the clients of the coroutines that wait on f
// (a server that crashes): their connections are reset now. The
// coroutines themselves run on to their timeout, answering nobody.
func (s *Sim) resetCoroutines(f *fsm.FSM) {
	for _, co := range s.co.parked {
		if co.f == f && co.onReset != nil {
			co.onReset()
			co.onReset, co.onDone = nil, func() {}
		}
	}
}

// coState is the endpoint's view of a server's FSM with Changed parking
// the running coroutine.
type coState struct {
	*fsm.FSM
	s *Sim
}

func (st coState) Changed() (<-chan struct{}, uint64) {
	co := st.s.co.running
	if co == nil {
		return st.FSM.Changed() // not in a coroutine: nothing blocks in the engine's thread
	}
	_, co.index = st.FSM.Changed()
	co.park <- struct{}{}
	mode := <-co.resume
	_, idx := st.FSM.Changed()
	if mode == coTimeout {
		return make(chan struct{}), idx
	}
	return closedCh, idx
}

// coClock is the endpoint's clock: After inside a coroutine is that
// coroutine's timeout, fired by an engine event.
type coClock struct {
	skewedClock
	s *Sim
}

func (c coClock) After(d time.Duration) <-chan time.Time {
	co := c.s.co.running
	if co == nil {
		return c.skewedClock.After(d)
	}
	co.timeout = make(chan time.Time, 1)
	c.s.E.After(d, "", func() { co.fired = true })
	return co.timeout
}

// Restart sends `chime vm restart VM`. The answer comes when the
// endpoint's restart returns (it waits for the agent); the write is
// recorded then. A request the network drops is recorded at once.
func (o *Operator) Restart(name string) {
	s := o.s
	started := false
	_, err := do(o.client(), "restart "+name, true, func(ep *endpoint.Endpoints, reqID string) (struct{}, error) {
		if started {
			return struct{}{}, nil // a duplicate or retry: the first delivery runs it
		}
		started = true
		f := s.Cluster.leader.FSM
		var rerr error
		s.spawn(f, func() {
			_, rerr = ep.VMAction(context.Background(), reqID, name, endpoint.VMRestart)
		}, func() {
			o.record(Write{Op: "restart", VM: name, Desired: structs.DesiredRunning}, rerr)
		}, func() {
			o.record(Write{Op: "restart", VM: name, Desired: structs.DesiredRunning}, errors.New("connection reset: the server crashed"))
		})
		return struct{}{}, nil
	})
	if err != nil && !started {
		o.record(Write{Op: "restart", VM: name, Desired: structs.DesiredRunning}, err)
	}
}
