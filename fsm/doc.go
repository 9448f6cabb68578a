// Package fsm is chime's replicated state machine: it applies the commands
// Raft commits to nodes, VMs, tasks and the event log, kept in bbolt by the
// state layer (package fsm/state), and halts rather than skip an entry it
// cannot apply as every replica must. It also holds the Raft log and stable
// store on bbolt and the waiters that let blocking queries sleep until the
// state passes a given index.
package fsm
