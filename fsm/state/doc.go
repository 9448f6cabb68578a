// Package state is the bbolt schema of chime's replicated state: one file
// per entity (nodes, VMs, tasks, events, alarms, request records, meta)
// holding its buckets and the typed reads and writes that keep its records
// and indexes consistent. It decides nothing about commands: package fsm,
// its only user, says what a command means and calls these functions
// inside the one transaction that applies it.
package state
