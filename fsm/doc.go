// Package fsm is chime's replicated state machine: nodes, VMs, tasks and the
// event log kept in bbolt, changed only by commands applied through Raft.
// It also holds the Raft log and stable store on bbolt and the waiters that
// let blocking queries sleep until the state passes a given index.
package fsm
