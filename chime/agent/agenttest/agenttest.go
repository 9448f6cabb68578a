// Package agenttest holds the fixtures the agent's packages' tests share:
// fixed VM ids, constructors for desired VMs and libvirt domains, and the
// wait for a condition (Poll).
//
// One copy instead of one per package: the reconciler, the store, the
// hand-over code and the agent wiring all describe the same VMs.
package agenttest

import (
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// Fixed VM ids; IDX names a domain chime does not manage.
const (
	IDA = "aaaaaaaa-0000-0000-0000-000000000001"
	IDB = "bbbbbbbb-0000-0000-0000-000000000002"
	IDC = "cccccccc-0000-0000-0000-000000000003"
	IDX = "ffffffff-0000-0000-0000-00000000000f"
)

// DesiredVM is a 1-vCPU, 64 MiB VM the servers want in state at generation gen.
func DesiredVM(id, name, state string, gen uint64) api.DesiredVM {
	return api.DesiredVM{ID: id, Name: name, DesiredState: state, Generation: gen,
		Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
}

// Domain is a chime domain of VM id at generation gen, in state.
func Domain(id, name, state string, gen uint64) hypervisor.Domain {
	return hypervisor.Domain{UUID: id, Name: hypervisor.DomainName(name), State: state,
		Meta: &hypervisor.Meta{VMID: id, Generation: gen}}
}

// Foreign is a domain without chime metadata: chime must never touch it.
func Foreign(id, name, state string) hypervisor.Domain {
	return hypervisor.Domain{UUID: id, Name: name, State: state}
}

// Poll checks cond every 5 ms until it holds, or fails t with what cond
// last saw after a generous 10 s.
func Poll(t testing.TB, what string, cond func() (bool, any)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last seen: %v", what, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
