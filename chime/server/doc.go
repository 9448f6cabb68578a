// Package server is chime's server mode: it wires Raft, the replicated state
// machine, gossip and the HTTP API together, forwards writes to the leader,
// and runs the leader's loops (node monitor, placement of pending VMs).
package server
