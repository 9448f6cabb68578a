// Package agent is chime's agent mode, the wiring around the agent's decision
// cores: it registers its hypervisor with the servers, watches the VMs placed
// on it, feeds the reconciler (package reconcile) and the HA operations
// (package handover), and reports what it sees in heartbeats. See DESIGN.md
// in this directory for the invariants (nothing starts before the first sync; stale copies are
// destroyed before anything starts and before the first heartbeat; a
// generation handed away never starts here again). New wires an agent
// without sockets; Run drives it with goroutines, or a caller (the
// simulator) steps it with RegisterOnce, SyncOnce, ReconcileOnce,
// HeartbeatOnce and the rest, over an injected clock and random source.
package agent
