// Package sim is chime's deterministic simulator: it runs the production
// decision code (FSM, leader duties, endpoints, agent) over a simulated
// clock, network and hypervisors, single-threaded and driven from a seed,
// so that a failing seed replays exactly. Its invariants are checked
// against the simulated world (for example the qemu processes each
// simulated hypervisor runs), never against chime's own view of it.
//
// The rule is "simulate the world, never the code": what chime talks to
// (libvirt, the network, time, Raft's replication) is simulated behind the
// interfaces chime already declares; chime's own code runs unchanged. The
// parts: Engine (simulated time, the seeded random source, the trace),
// Network (links, partitions, loss, delay, duplication), Cluster (three
// servers with real FSMs over an ideal committed log, elections, the
// leader's duties as events), Host (power, a Hypervisor — one simulated
// host's libvirtd and qemu processes — and the real agent stepped as
// events), Operator (the CLI's requests, acknowledged writes, lies),
// Checker (the invariants), Schedule (the scenario language, random
// schedules, the shrinker). docs/testing.md is the manual.
package sim
