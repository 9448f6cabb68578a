// Package endpoint is what each server operation does, without HTTP: an
// agent's register, heartbeat, desired-state read and migration report, and
// an operator's VM and node actions, each one method taking the decoded
// request and returning values and structs error kinds. The HTTP handlers
// decode, call it and encode; the simulator calls it directly.
package endpoint
