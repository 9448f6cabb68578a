// Package scheduler decides which node a VM runs on. It is a set of pure,
// deterministic functions over the nodes and VMs the FSM holds: no I/O, no clock,
// no randomness, so the leader, tests and a simulator get the same answer for the
// same input.
//
// A node is eligible when it is enabled and normal, not excluded by the caller, has
// free vCPUs (capacity × overcommit, rounded down) and free memory for the VM, and runs
// no other VM of the VM's anti-affinity group. Every VM placed on a node reserves its
// resources whatever its desired state: a stopped VM may be started at any time and must
// still fit. Among eligible nodes, "spread" (the default) picks the one left with the
// largest free memory fraction and "binpack" the one left with the least free memory.
//
// PlaceRanked and PlaceAllRanked give the same answer from an index of free capacity
// (fsm/view keeps one: per node shape, the nodes ordered by usage), visiting a few nodes
// instead of scoring every one; PlaceOn and PlaceAllOn score every node.
package scheduler
