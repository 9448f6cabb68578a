//go:build !chime_mutation

package agent

// mutationStartBeforeSync breaks invariant 1 of DESIGN.md on purpose when
// set: the agent then reconciles against the desired state a previous
// process persisted, before its first sync. It is false in every build
// except the simulator's mutation check (`go test -tags chime_mutation
// ./integration/sim`, mutation_on.go, where MutateStartBeforeSync switches
// it), which shows that the simulator catches the broken rule. Here it is
// a constant: the compiler removes the branch it guards.
const mutationStartBeforeSync = false
