// Package server is chime's server mode: it wires Raft, the replicated state
// machine, gossip and the HTTP API together, forwards writes to the leader,
// and, while leader, runs the node monitor and the duties that live in its
// subpackages (placement, tasks, alarms).
package server
