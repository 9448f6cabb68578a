// Package server is chime's server mode: it wires Raft, the replicated state
// machine, gossip and the HTTP API together, forwards writes to the leader,
// and runs the leader's loops (the heartbeat monitor of package heartbeat,
// placement of pending VMs, tasks, alarms).
package server
