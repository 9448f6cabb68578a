// Package structs is chime's vocabulary: the Node, VM, Task, Event and Alarm
// records, their states, the limits on them and the pure rules about them
// (is an observation current, is a copy stale, is a name valid).
//
// It sits at the bottom of the dependency graph and imports only the
// standard library: the FSM, the scheduler, the hypervisor driver and the
// decision cores use it without pulling in HTTP. Errors here carry a kind
// (not found, conflict, invalid, forbidden) and a field; which HTTP status
// a kind becomes is decided in chime/api, where an answer is written.
package structs
