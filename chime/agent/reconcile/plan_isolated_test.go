package reconcile

import (
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// An isolated node kills every chime domain that may run, stale or
// current, desired or not, and does nothing else.
func TestPlanIsolated(t *testing.T) {
	a := dvm(idA, "a", structs.DesiredRunning, 10)
	run, stop, crash, other := hypervisor.StateRunning, hypervisor.StateStopped, hypervisor.StateCrashed, hypervisor.StateOther
	tests := []struct {
		name    string
		desired []api.DesiredVM
		domains []hypervisor.Domain
		want    string
	}{
		{name: "nothing runs", desired: []api.DesiredVM{a}, want: ""},
		{name: "desired running is killed, not started again", desired: []api.DesiredVM{a},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)}, want: "isolate-stop a\n"},
		{name: "stale and transitional copies too", desired: []api.DesiredVM{a},
			domains: []hypervisor.Domain{dom(idA, "a", other, 10), dom(idB, "b", run, 3), dom(idC, "c", stop, 4)},
			want:    "isolate-stop a\nisolate-stop b\n"},
		{name: "crashed and foreign domains are left", domains: []hypervisor.Domain{dom(idA, "a", crash, 10), foreign(idX, "x", run)}, want: ""},
		{name: "no desired state (before the first sync)", domains: []hypervisor.Domain{dom(idB, "b", run, 3)}, want: "isolate-stop b\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := render(Plan(tc.desired, tc.domains, PlanOptions{Isolated: true, Defined: defined(tc.desired...)}))
			if got != tc.want {
				t.Fatalf("plan:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}
