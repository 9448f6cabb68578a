// Package sim is chime's deterministic simulator: it runs the production
// decision code (FSM, leader duties, agent reconcile and hand-over logic)
// over a simulated clock, network and hypervisors, single-threaded and
// driven from a seed, so that a failing seed replays exactly. Its invariants
// are checked against the simulated world (for example the qemu processes
// each simulated hypervisor runs), never against chime's own view of it.
//
// The rule is "simulate the world, never the code": what chime talks to
// (libvirt, the network, time) is simulated behind the interfaces chime
// already declares; chime's own code runs unchanged. Hypervisor is one
// simulated host's libvirtd and qemu processes.
package sim
