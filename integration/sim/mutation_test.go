//go:build chime_mutation

package sim

import (
	"flag"
	"fmt"
	"testing"

	"github.com/chime-ha/chime/chime/agent"
)

var flagMutationMax = flag.Int("sim.mutation.max", 1000, "seeds the mutation check may try")

// TestMutationStartBeforeSync is the mutation check: built with -tags
// chime_mutation, the agent can be made to break its first rule (it then
// reconciles against the desired state a previous process persisted,
// before its first sync; chime/agent/mutation_on.go). Random seeds run with
// the mutation until one breaks an invariant that the same seed keeps
// without it; the number of seeds that took is printed. Seeds that fail
// both ways (a bug of today's code, not the mutation's) are counted apart.
func TestMutationStartBeforeSync(t *testing.T) {
	defer agent.MutateStartBeforeSync(false)
	both := 0
	for i := 0; i < *flagMutationMax; i++ {
		seed := *flagFirst + uint64(i)
		agent.MutateStartBeforeSync(true)
		res, err := Run(RandomSchedule(seed, MutationProfile), RunOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Failed() {
			continue
		}
		agent.MutateStartBeforeSync(false)
		base, err := Run(RandomSchedule(seed, MutationProfile), RunOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if base.Failed() {
			both++
			continue
		}
		fmt.Printf("mutation (start before the first sync) caught after %d seeds (%d others failed with and without it): seed %d: %s\n",
			i+1, both, seed, res.Violations[0])
		t.Logf("schedule:\n%s\ntrace tail:\n%s", res.Schedule, res.Tail(40))
		return
	}
	t.Fatalf("the mutation (start before the first sync) was not caught within %d seeds (%d failed with and without it)", *flagMutationMax, both)
}
