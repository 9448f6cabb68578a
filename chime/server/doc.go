// Package server is chime's server mode: it wires Raft, the replicated state
// machine, gossip and the HTTP API together, forwards writes to the leader,
// and, while leader, runs the leader's duties: the heartbeat monitor
// (package heartbeat), placement of pending VMs, tasks and alarms (packages
// placement, tasks, alarms). Its handlers are HTTP only: what each request
// does is package endpoint's.
package server
