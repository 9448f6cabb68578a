package gossip

import (
	"fmt"

	"github.com/hashicorp/memberlist"
)

// Member states as the pool reports them.
//
// They come from memberlist's own per-node state, read through the accessors
// chime's fork of memberlist adds (gossip/third_party/memberlist/chime_states.go):
// upstream v0.7.0 keeps that state unexported, never fills the exported
// Node.State, fires no event on suspect and calls NotifyLeave for both dead
// and left.
const (
	StateAlive   = "alive"   // answering probes
	StateSuspect = "suspect" // a probe (direct and indirect) failed; not yet declared dead
	StateDead    = "dead"    // the suspicion timed out without a refutation
	StateLeft    = "left"    // the member announced its departure (Leave)
)

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return StateAlive
	case memberlist.StateSuspect:
		return StateSuspect
	case memberlist.StateDead:
		return StateDead
	case memberlist.StateLeft:
		return StateLeft
	}
	return fmt.Sprintf("unknown(%d)", int(s))
}

// overlayStates replaces the event-time states in table with memberlist's
// current ones (which include suspect). Members memberlist has already
// forgotten (it reaps dead and left nodes) keep the state of their last
// event. It takes memberlist's node lock: never call it from a callback.
func overlayStates(ml *memberlist.Memberlist, table map[string]Member) {
	for name, s := range ml.NodeStates() {
		if m, ok := table[name]; ok {
			m.State = stateName(s)
			table[name] = m
		}
	}
}
