// Package hapolicy decides whether automatic HA may act now: the
// operator's cluster-wide arm switch, the mass-failure brake, and the
// alarms of the HA reservation (admission control, --ha-tolerate-failures).
// Its rules are pure functions over the replicated state (Armed, Next,
// Alarms); the Guard is the small leader duty that records the brake's
// transitions through Raft, and the operator's arm and disarm.
//
// The recovery duty (automatic HA) asks Guard.Armed, or the pure Armed,
// before every restart it would start: nothing here restarts anything.
package hapolicy
