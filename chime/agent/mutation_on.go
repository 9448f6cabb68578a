//go:build chime_mutation

package agent

// mutationStartBeforeSync: see mutation.go. In this build (tag
// chime_mutation, the simulator's mutation check only) the rule is broken
// while MutateStartBeforeSync(true) is in force, so that the check can run
// the same seed with and without the mutation.
var mutationStartBeforeSync = false

// MutateStartBeforeSync switches the mutation on or off for agents
// reconciling from now on. It exists only in the chime_mutation build.
func MutateStartBeforeSync(on bool) { mutationStartBeforeSync = on }
