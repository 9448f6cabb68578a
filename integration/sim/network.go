package sim

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
)

// The simulated network.
//
// Every machine (server or host) has one link per network it is on: the
// management network (servers and hosts: agent ↔ server, server ↔ server,
// agent ↔ agent API, gossip, ping-back) and the business network (hosts
// only: guest traffic, and the path a node-local migration may take when
// management is down). A link is up or down; a directed path from A to B
// on a network can be cut on its own (a one-way partition) or both ways.
// On top of that, each directed path can lose, delay and duplicate
// requests and lose answers at random, drawn from the run's seed.
//
// Calls stay synchronous for the caller, because the production code that
// makes them (the agent's client, the leader's ping-back) is synchronous.
// A call from A to B ends in one of these ways:
//
//   - delivered: B handles it now and A gets B's answer;
//   - dropped: A's link, B's link or the path A→B is down, or B does not
//     listen (process dead), or the request was lost: A gets an error and B
//     never sees the request;
//   - answer lost: B handles it now, but the path B→A is down or the answer
//     was lost: A gets a timeout error although the request took effect
//     (the "report lost" case);
//   - delayed: A gets a timeout error now, and B handles the request later,
//     as a scheduled event (so requests can arrive out of order, and after
//     the caller gave up and retried);
//   - duplicated: B handles it now (A gets the answer) and once more later.
//
// A request in flight (delayed or duplicated) is handled when it arrives
// if B listens then, whatever the links do meanwhile.

// Net names one of a machine's networks.
type Net int

// The networks.
const (
	Mgmt Net = iota
	Business
)

func (k Net) String() string {
	if k == Business {
		return "biz"
	}
	return "mgmt"
}

// PathFaults are the random faults of one directed path: each is the
// probability that one request suffers it.
type PathFaults struct {
	Loss       float64       // the request is lost
	AnswerLoss float64       // handled, the answer is lost
	Delay      float64       // handled later; the caller times out now
	Dup        float64       // handled now and once more later
	MaxDelay   time.Duration // a delayed or duplicated request arrives within this (default 30 s)
}

func (f PathFaults) zero() bool {
	return f.Loss == 0 && f.AnswerLoss == 0 && f.Delay == 0 && f.Dup == 0
}

// Errors a caller gets from the network itself (never from the handler).
var (
	ErrUnreachable = errors.New("unreachable")
	ErrTimeout     = errors.New("timed out")
)

// NetError is a failure of the network, not an answer of the callee.
type NetError struct {
	Call string // what was called, for messages
	Err  error  // ErrUnreachable or ErrTimeout
}

func (e *NetError) Error() string { return fmt.Sprintf("sim network: %s: %v", e.Call, e.Err) }
func (e *NetError) Unwrap() error { return e.Err }

type linkKey struct {
	node string
	net  Net
}

type pathKey struct {
	from, to string
	net      Net
}

// Network is the simulated network of one Engine.
type Network struct {
	w      *Engine
	down   map[linkKey]bool // links that are down
	cut    map[pathKey]bool // directed paths that are cut
	faults map[pathKey]PathFaults
	byKind map[string]PathFaults   // per kind of request (the first word of its name), before any path's
	def    [2]PathFaults           // per network, for paths without their own
	listen map[string]func() error // machine → nil if its process answers now, else why not
	counts map[string]uint64       // outcome → requests that had it (coverage)
}

// NewNetwork returns a network where every link is up and nothing is lost.
func NewNetwork(w *Engine) *Network {
	return &Network{w: w, down: map[linkKey]bool{}, cut: map[pathKey]bool{}, faults: map[pathKey]PathFaults{}, byKind: map[string]PathFaults{},
		listen: map[string]func() error{}, counts: map[string]uint64{}}
}

// Listen registers machine name's process: fn says whether it answers now
// (nil), or the error a caller gets (ErrUnreachable for a dead process on
// a live host, ErrTimeout for a frozen one or a host without power).
func (n *Network) Listen(name string, fn func() error) { n.listen[name] = fn }

// SetLink brings a machine's link on one network up or down.
func (n *Network) SetLink(node string, k Net, up bool) {
	if up {
		delete(n.down, linkKey{node, k})
	} else {
		n.down[linkKey{node, k}] = true
	}
	n.w.trace.Addf("net", "link %s/%s %s", node, k, upDown(up))
}

// LinkUp reports whether a machine's link is up.
func (n *Network) LinkUp(node string, k Net) bool { return !n.down[linkKey{node, k}] }

// Cut cuts the directed path from → to on network k (Restore undoes it).
func (n *Network) Cut(from, to string, k Net) {
	n.cut[pathKey{from, to, k}] = true
	n.w.trace.Addf("net", "cut %s>%s/%s", from, to, k)
}

// Restore undoes Cut.
func (n *Network) Restore(from, to string, k Net) {
	delete(n.cut, pathKey{from, to, k})
	n.w.trace.Addf("net", "restore %s>%s/%s", from, to, k)
}

// HealAll brings every link up, restores every path and clears every
// random fault.
func (n *Network) HealAll() {
	clear(n.down)
	clear(n.cut)
	clear(n.faults)
	clear(n.byKind)
	n.def = [2]PathFaults{}
	n.w.trace.Add("net", "heal all")
}

// SetFaults sets the random faults of the directed path from → to.
func (n *Network) SetFaults(from, to string, k Net, f PathFaults) {
	if f.zero() {
		delete(n.faults, pathKey{from, to, k})
	} else {
		n.faults[pathKey{from, to, k}] = f
	}
	n.w.trace.Addf("net", "faults %s>%s/%s %+v", from, to, k, f)
}

// SetRequestFaults sets the random faults of every request of one kind
// (the first word of its name: register, desired, heartbeat, migrated,
// ping, adopt, forward, or an operator's request), on any path; they take
// precedence over the path's own.
func (n *Network) SetRequestFaults(kind string, f PathFaults) {
	if f.zero() {
		delete(n.byKind, kind)
	} else {
		n.byKind[kind] = f
	}
	n.w.trace.Addf("net", "faults of %s requests %+v", kind, f)
}

// SetDefaultFaults sets the random faults of every path of network k
// that has none of its own.
func (n *Network) SetDefaultFaults(k Net, f PathFaults) {
	n.def[k] = f
	n.w.trace.Addf("net", "default faults /%s %+v", k, f)
}

// PathUp reports whether a request from → to on network k can get through
// now, leaving random faults aside: both links up and the path not cut.
// A machine always reaches itself.
func (n *Network) PathUp(from, to string, k Net) bool {
	if from == to {
		return true
	}
	return !n.down[linkKey{from, k}] && !n.down[linkKey{to, k}] && !n.cut[pathKey{from, to, k}]
}

// BothWays reports whether the paths a → b and b → a are both up.
func (n *Network) BothWays(a, b string, k Net) bool { return n.PathUp(a, b, k) && n.PathUp(b, a, k) }

func (n *Network) pathFaults(from, to string, k Net, what string) PathFaults {
	kind, _, _ := strings.Cut(what, " ")
	if f, ok := n.byKind[kind]; ok {
		return f
	}
	if f, ok := n.faults[pathKey{from, to, k}]; ok {
		return f
	}
	return n.def[k]
}

func (n *Network) count(outcome string) { n.counts[outcome]++ }

// Outcomes counts the requests by how they ended (delivered, dropped, lost,
// answer lost, delayed, duplicated): what a run's network faults covered.
func (n *Network) Outcomes() map[string]uint64 { return maps.Clone(n.counts) }

// Send sends one request from → to on network k and returns the answer,
// following the model in the package comment. what names the call in the
// trace; handle is the callee's code, run when the request arrives.
func Send[T any](n *Network, from, to string, k Net, what string, handle func() (T, error)) (T, error) {
	var zero T
	route := fmt.Sprintf("%s>%s/%s %s", from, to, k, what)
	fail := func(outcome string, err error) (T, error) {
		n.count(strings.Fields(outcome)[0])
		n.w.trace.Addf("net", "%s: %s", route, outcome)
		return zero, &NetError{Call: what + " " + from + ">" + to, Err: err}
	}
	if !n.PathUp(from, to, k) {
		return fail("dropped (no path)", ErrUnreachable)
	}
	if err := n.listening(to); err != nil {
		return fail("dropped ("+err.Error()+")", err)
	}
	f := n.pathFaults(from, to, k, what)
	var lost, answerLost, delayed, dup bool
	if !f.zero() {
		r := n.w.rand
		lost = r.Float64() < f.Loss
		delayed = !lost && r.Float64() < f.Delay
		dup = !lost && !delayed && r.Float64() < f.Dup
		answerLost = !lost && !delayed && r.Float64() < f.AnswerLoss
	}
	later := func(tag string) {
		maxD := f.MaxDelay
		if maxD <= 0 {
			maxD = 30 * time.Second
		}
		d := time.Duration(n.w.rand.Int64N(int64(maxD))) + time.Millisecond
		n.w.trace.Addf("net", "%s: %s, arrives in %s", route, tag, d)
		n.w.After(d, "arrive "+route, func() {
			if err := n.listening(to); err != nil {
				n.w.trace.Addf("net", "%s: late request dropped (%v)", route, err)
				return
			}
			_, err := handle()
			n.w.trace.Addf("net", "%s: late request handled: %s", route, errText(err))
		})
	}
	switch {
	case lost:
		return fail("lost", ErrTimeout)
	case delayed:
		n.count("delayed")
		later("delayed")
		return zero, &NetError{Call: what + " " + from + ">" + to, Err: ErrTimeout}
	}
	if dup {
		n.count("duplicated")
		later("duplicated")
	}
	out, err := handle()
	if answerLost || !n.PathUp(to, from, k) {
		why := "answer lost"
		if !answerLost {
			why = "answer dropped (no path back)"
		}
		n.count("answer-lost")
		n.w.trace.Addf("net", "%s: handled (%s), %s", route, errText(err), why)
		return zero, &NetError{Call: what + " " + from + ">" + to, Err: ErrTimeout}
	}
	n.count("delivered")
	n.w.trace.Addf("net", "%s: %s", route, errText(err))
	return out, err
}

func (n *Network) listening(to string) error {
	fn, ok := n.listen[to]
	if !ok {
		return ErrUnreachable
	}
	return fn()
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
