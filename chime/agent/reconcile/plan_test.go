package reconcile

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/agent/agenttest"
	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/hypervisor"
)

const (
	idA = agenttest.IDA
	idB = agenttest.IDB
	idC = agenttest.IDC
	idX = agenttest.IDX
)

var (
	dvm     = agenttest.DesiredVM
	dom     = agenttest.Domain
	foreign = agenttest.Foreign
)

// defined records every desired VM as defined with its current spec.
func defined(vms ...api.DesiredVM) map[string]hypervisor.DomainSpec {
	m := map[string]hypervisor.DomainSpec{}
	for _, vm := range vms {
		m[vm.ID] = DomainSpecOf(vm)
	}
	return m
}

// render turns a plan into "kind id-prefix" lines so expectations read easily.
func render(actions []Action) string {
	var b strings.Builder
	for _, a := range actions {
		fmt.Fprintf(&b, "%s %s\n", a.Kind, a.VMID[:1])
	}
	return b.String()
}

func TestPlan(t *testing.T) {
	a1 := dvm(idA, "a", structs.DesiredRunning, 10)
	a1stopped := dvm(idA, "a", structs.DesiredStopped, 10)
	a1gen12 := dvm(idA, "a", structs.DesiredRunning, 12)
	a1bigger := a1
	a1bigger.Spec.MemoryMiB = 128
	b1 := dvm(idB, "b", structs.DesiredRunning, 20)
	c1 := dvm(idC, "c", structs.DesiredRunning, 30)
	run, stop, crash, other := hypervisor.StateRunning, hypervisor.StateStopped, hypervisor.StateCrashed, hypervisor.StateOther

	tests := []struct {
		name    string
		desired []api.DesiredVM
		domains []hypervisor.Domain
		opts    PlanOptions
		want    string
	}{
		{name: "nothing to do", want: ""},
		{name: "new running vm is defined then started",
			desired: []api.DesiredVM{a1},
			want:    "define a\nstart a\n"},
		{name: "new stopped vm is defined only",
			desired: []api.DesiredVM{a1stopped},
			want:    "define a\n"},
		{name: "running and recorded: nothing",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    ""},
		{name: "crashed vm is started again",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", crash, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "start a\n"},
		{name: "stopped vm desired running is started",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", stop, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "start a\n"},
		{name: "running vm desired stopped is shut down",
			desired: []api.DesiredVM{a1stopped},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1stopped)},
			want:    "shutdown a\n"},
		{name: "stopped vm desired stopped: nothing",
			desired: []api.DesiredVM{a1stopped},
			domains: []hypervisor.Domain{dom(idA, "a", stop, 10)},
			opts:    PlanOptions{Defined: defined(a1stopped)},
			want:    ""},
		{name: "crashed vm desired stopped: nothing",
			desired: []api.DesiredVM{a1stopped},
			domains: []hypervisor.Domain{dom(idA, "a", crash, 10)},
			opts:    PlanOptions{Defined: defined(a1stopped)},
			want:    ""},
		{name: "shutting down vm desired stopped: wait",
			desired: []api.DesiredVM{a1stopped},
			domains: []hypervisor.Domain{dom(idA, "a", other, 10)},
			opts:    PlanOptions{Defined: defined(a1stopped)},
			want:    ""},
		{name: "shutting down vm desired running: not started twice",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", other, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    ""},
		{name: "spec change redefines a running vm without restarting it",
			desired: []api.DesiredVM{a1bigger},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "define a\n"},
		{name: "unrecorded definition is redefined",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			want:    "define a\n"},
		{name: "domain not placed here is stale: destroyed and undefined",
			domains: []hypervisor.Domain{dom(idB, "b", run, 20)},
			want:    "destroy-stale b\nundefine-stale b\n"},
		{name: "stopped stale domain is only undefined",
			domains: []hypervisor.Domain{dom(idB, "b", stop, 20)},
			want:    "undefine-stale b\n"},
		{name: "crashed stale domain is only undefined",
			domains: []hypervisor.Domain{dom(idB, "b", crash, 20)},
			want:    "undefine-stale b\n"},
		{name: "shutting-down stale domain is destroyed",
			domains: []hypervisor.Domain{dom(idB, "b", other, 20)},
			want:    "destroy-stale b\nundefine-stale b\n"},
		{name: "older generation is stale, then redefined and started",
			desired: []api.DesiredVM{a1gen12},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "destroy-stale a\nundefine-stale a\ndefine a\nstart a\n"},
		{name: "migrated-in domain (adopt generation) is kept running and its metadata updated",
			desired: []api.DesiredVM{func() api.DesiredVM { v := a1gen12; v.AdoptGeneration = 10; return v }()},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "define a\n"},
		{name: "older generation than the adopted one is still stale",
			desired: []api.DesiredVM{func() api.DesiredVM { v := a1gen12; v.AdoptGeneration = 11; return v }()},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "destroy-stale a\nundefine-stale a\ndefine a\nstart a\n"},
		{name: "held domain (migration in flight) is left alone",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", stop, 10)},
			opts:    PlanOptions{Defined: defined(a1), Hold: []string{idA}},
			want:    ""},
		{name: "held incoming domain not placed here is not stale",
			domains: []hypervisor.Domain{dom(idB, "b", run, 20)},
			opts:    PlanOptions{Hold: []string{idB}},
			want:    ""},
		{name: "older generation stopped copy is undefined and redefined",
			desired: []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 12)},
			domains: []hypervisor.Domain{dom(idA, "a", stop, 10)},
			want:    "undefine-stale a\ndefine a\n"},
		{name: "newer generation domain is left alone",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", run, 15)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    "conflict a\n"},
		{name: "domain without metadata is never touched",
			domains: []hypervisor.Domain{foreign(idX, "mine", run)},
			want:    ""},
		{name: "domain without metadata holding a desired uuid blocks the vm",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{foreign(idA, "someone-elses", stop)},
			want:    "conflict a\n"},
		{name: "metadata naming another vm is stale",
			domains: []hypervisor.Domain{{UUID: idA, Name: "chime-a", State: run, Meta: &hypervisor.Meta{VMID: idB, Generation: 10}}},
			desired: nil,
			want:    "destroy-stale a\nundefine-stale a\n"},
		{name: "drain: nothing started, running domains shut down, foreign untouched",
			desired: []api.DesiredVM{a1, b1, c1},
			domains: []hypervisor.Domain{dom(idA, "a", run, 10), dom(idB, "b", crash, 20), foreign(idX, "mine", run)},
			opts:    PlanOptions{Drained: true, Defined: defined(a1, b1)},
			want:    "shutdown a\ndefine c\n"},
		{name: "drain still destroys stale copies",
			domains: []hypervisor.Domain{dom(idB, "b", run, 20)},
			opts:    PlanOptions{Drained: true},
			want:    "destroy-stale b\nundefine-stale b\n"},
		{name: "drain shuts down a newer-generation domain",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(idA, "a", run, 15)},
			opts:    PlanOptions{Drained: true},
			want:    "shutdown a\nconflict a\n"},
		{name: "held domain is neither destroyed nor started",
			desired: []api.DesiredVM{b1},
			domains: []hypervisor.Domain{dom(idA, "a", run, 5), dom(idB, "b", crash, 20)},
			opts:    PlanOptions{Hold: []string{idA, idB}},
			want:    ""},
		{name: "held running domain is shut down by drain",
			domains: []hypervisor.Domain{dom(idA, "a", run, 5)},
			opts:    PlanOptions{Hold: []string{idA}, Drained: true},
			want:    "shutdown a\n"},
		{name: "uuid case does not matter",
			desired: []api.DesiredVM{a1},
			domains: []hypervisor.Domain{dom(strings.ToUpper(idA), "a", run, 10)},
			opts:    PlanOptions{Defined: defined(a1)},
			want:    ""},
		{name: "all stale destroys come before any start, groups ordered",
			desired: []api.DesiredVM{c1, a1gen12, dvm(idB, "b", structs.DesiredStopped, 20)},
			domains: []hypervisor.Domain{
				dom(idB, "b", run, 20),
				dom(idA, "a", run, 10),
				dom("dddddddd-0000-0000-0000-000000000004", "d", run, 3),
				foreign(idX, "mine", run),
			},
			opts: PlanOptions{Defined: defined(dvm(idB, "b", structs.DesiredStopped, 20))},
			want: "destroy-stale a\ndestroy-stale d\nundefine-stale a\nundefine-stale d\n" +
				"shutdown b\ndefine a\ndefine c\nstart a\nstart c\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render(Plan(tt.desired, tt.domains, tt.opts))
			if got != tt.want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestPlanStaleBeforeStart checks the ordering invariant on many shuffled
// inputs rather than one hand-written case.
func TestPlanStaleBeforeStart(t *testing.T) {
	var desired []api.DesiredVM
	var domains []hypervisor.Domain
	for i := 0; i < 40; i++ {
		id := fmt.Sprintf("%08x-0000-0000-0000-%012x", i, i)
		switch i % 4 {
		case 0: // stale copy
			domains = append(domains, dom(id, fmt.Sprint("s", i), hypervisor.StateRunning, 1))
		case 1: // new
			desired = append(desired, dvm(id, fmt.Sprint("n", i), structs.DesiredRunning, 5))
		case 2: // older generation
			desired = append(desired, dvm(id, fmt.Sprint("o", i), structs.DesiredRunning, 9))
			domains = append(domains, dom(id, fmt.Sprint("o", i), hypervisor.StateRunning, 4))
		case 3: // crashed
			desired = append(desired, dvm(id, fmt.Sprint("c", i), structs.DesiredRunning, 7))
			domains = append(domains, dom(id, fmt.Sprint("c", i), hypervisor.StateCrashed, 7))
		}
	}
	plan := Plan(desired, domains, PlanOptions{})
	lastStale, firstStart := -1, len(plan)
	for i, a := range plan {
		switch a.Kind {
		case ActionDestroyStale, ActionUndefineStale:
			lastStale = i
		case ActionStart:
			if i < firstStart {
				firstStart = i
			}
		}
	}
	if lastStale < 0 || firstStart == len(plan) {
		t.Fatalf("expected both stale and start actions, got:\n%s", render(plan))
	}
	if lastStale > firstStart {
		t.Fatalf("stale step at %d after first start at %d:\n%s", lastStale, firstStart, render(plan))
	}
}

func TestPlanDefineCarriesMetadata(t *testing.T) {
	vm := dvm(idA, "web", structs.DesiredRunning, 42)
	vm.Spec.Disks = []string{"/srv/web.qcow2"}
	plan := Plan([]api.DesiredVM{vm}, nil, PlanOptions{})
	if len(plan) == 0 || plan[0].Kind != ActionDefine || plan[0].Spec == nil {
		t.Fatalf("want a define first, got:\n%s", render(plan))
	}
	got := *plan[0].Spec
	if got.VMID != idA || got.Generation != 42 || got.Name != "web" || got.MemoryMiB != 64 || len(got.Disks) != 1 {
		t.Fatalf("define spec = %+v", got)
	}
	if plan[0].Name != "chime-web" {
		t.Fatalf("domain name = %q, want chime-web", plan[0].Name)
	}
}
