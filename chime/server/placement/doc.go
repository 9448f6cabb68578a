// Package placement decides where VMs run, on the leader: it asks the
// scheduler over a read of the replicated state, and holds the one lock
// that makes each decide-and-propose a single step. It also runs the loop
// that places pending VMs as soon as a node has room.
package placement
