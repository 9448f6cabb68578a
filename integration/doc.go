// Package integration holds chime's end-to-end tests: they build the real
// binary once, start servers and agents as processes (agents inside the
// network-namespace hosts of package lab, each with its own libvirtd), and
// drive them through the CLI and the HTTP API as an operator would.
package integration
