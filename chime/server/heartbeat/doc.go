// Package heartbeat is where an agent's heartbeat lands on the leader: it
// keeps each node's last arrival time in leader memory and turns one
// heartbeat into at most one node.heartbeat command carrying what changed.
// It is also the node monitor: a node silent for longer than missed ×
// interval less one ping-back timeout is pinged back (directly and
// through gossip) and, when neither answers and it is then silent for
// longer than missed × interval, marked unreachable.
package heartbeat
