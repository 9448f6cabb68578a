// Package fsmtest holds test fixtures over a real FSM: no Raft, no HTTP.
// A World is an fsm.FSM in a temporary directory, an fsm.Direct proposer
// over it on a manual Clock, and the typed helpers the tests of the
// server's decision cores share (register a node, create a VM, read one
// back), each failing the test instead of returning an error.
package fsmtest
