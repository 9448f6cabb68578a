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

// TestShrink shrinks a schedule that fails for a known reason: the
// mutation above (an agent that starts VMs before its first sync). The
// first random seed the mutation breaks is shrunk; the smaller schedule
// must still break an invariant the original broke with the mutation on,
// and pass with it off (the failure is the mutation's, not the schedule's).
func TestShrink(t *testing.T) {
	defer agent.MutateStartBeforeSync(false)
	for i := 0; i < *flagMutationMax; i++ {
		seed := *flagFirst + uint64(i)
		sc := RandomSchedule(seed, MutationProfile)
		agent.MutateStartBeforeSync(true)
		res, err := Run(sc, RunOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Failed() {
			continue
		}
		agent.MutateStartBeforeSync(false)
		if base, err := Run(sc, RunOptions{}); err != nil || base.Failed() {
			continue // fails without the mutation too: not the known failure
		}
		agent.MutateStartBeforeSync(true)
		small, smallRes, runs := Shrink(sc, res, 60)
		if len(small.Items) >= len(sc.Items) || !smallRes.Failed() {
			t.Fatalf("seed %d: shrunk to %d of %d items in %d runs, failed: %v", seed, len(small.Items), len(sc.Items), runs, smallRes.Failed())
		}
		want := map[Invariant]bool{}
		for _, v := range res.Violations {
			want[v.Inv] = true
		}
		if !want[smallRes.Violations[0].Inv] {
			t.Fatalf("the shrunk schedule breaks %s, the original broke %v", smallRes.Violations[0].Inv, res.Violations)
		}
		agent.MutateStartBeforeSync(false)
		off, err := Run(small, RunOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if off.Failed() {
			t.Fatalf("the shrunk schedule fails without the mutation too: %v\n%s", off.Violations, small)
		}
		t.Logf("seed %d shrunk %d → %d items in %d runs (%s):\n%s", seed, len(sc.Items), len(small.Items), runs, smallRes.Violations[0], small)
		return
	}
	t.Fatalf("no seed within %d failed with the mutation only", *flagMutationMax)
}
