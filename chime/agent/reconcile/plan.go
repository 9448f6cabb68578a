// Package reconcile makes this hypervisor's libvirt match the VMs the
// servers placed on it: Plan decides the steps as a pure function, and the
// Reconciler gathers Plan's inputs and carries the steps out. It is the one
// place where the agent starts a VM's qemu and destroys stale copies.
package reconcile

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// ActionKind says what one reconcile step does to a libvirt domain.
type ActionKind string

// Action kinds, in the order Plan emits their groups.
const (
	// ActionDestroyStale kills the qemu process of a stale copy (a chime
	// domain not placed here, or with an older generation than the placement).
	ActionDestroyStale ActionKind = "destroy-stale"
	// ActionUndefineStale removes a stale copy's definition.
	ActionUndefineStale ActionKind = "undefine-stale"
	// ActionShutdown asks a guest to shut down (desired stopped, or local drain).
	ActionShutdown ActionKind = "shutdown"
	// ActionDefine defines (or redefines) a domain with the current spec and metadata.
	ActionDefine ActionKind = "define"
	// ActionStart starts a defined domain (first start, or restart after a crash).
	ActionStart ActionKind = "start"
	// ActionIsolate kills the qemu process of a domain (keeping its
	// definition) because the node is isolated: no heartbeat was
	// acknowledged for the isolation lease (isolation response stop).
	ActionIsolate ActionKind = "isolate-stop"
	// ActionConflict changes nothing: it reports why a desired VM cannot be
	// made so (a domain without chime metadata holds its UUID, or a newer
	// copy exists). The reconciler logs it.
	ActionConflict ActionKind = "conflict"
)

// kindOrder is the order of the groups in a plan. Stale copies go first so
// that no VM is ever started on a node that still runs a copy it should
// not (uniqueness rule 2); shutdowns precede starts so capacity is freed.
var kindOrder = map[ActionKind]int{
	ActionDestroyStale:  0,
	ActionUndefineStale: 1,
	ActionShutdown:      2,
	ActionDefine:        3,
	ActionStart:         4,
	ActionConflict:      5,
	ActionIsolate:       6,
}

// Action is one step of a plan.
type Action struct {
	Kind       ActionKind
	VMID       string                 // equals the domain UUID
	Name       string                 // domain name, for logs
	Generation uint64                 // generation the step acts for (desired, or the stale copy's)
	Spec       *hypervisor.DomainSpec // for ActionDefine
	Reason     string                 // why, for logs
}

func (a Action) String() string {
	return fmt.Sprintf("%s %s (%s, gen %d): %s", a.Kind, a.VMID, a.Name, a.Generation, a.Reason)
}

// PlanOptions are the inputs of Plan besides desired VMs and domains.
type PlanOptions struct {
	// Drained is the local drain flag: nothing is started and every running
	// chime domain is shut down.
	Drained bool
	// Defined is the spec last defined in libvirt per VM id. A desired VM whose
	// spec differs, or that has no entry, is (re)defined.
	Defined map[string]hypervisor.DomainSpec
	// Hold lists VM ids whose domains must be left alone (a refused
	// instruction, or a domain adopted by node-local migration that the
	// servers have not decided on yet).
	Hold []string
	// Isolated: the isolation lease expired (isolation response stop).
	// Every chime domain whose qemu may run is killed, nothing else is
	// done: no start, no define, whatever the desired state says.
	Isolated bool
}

// DomainSpecOf is the libvirt definition of a desired VM.
func DomainSpecOf(vm api.DesiredVM) hypervisor.DomainSpec {
	return hypervisor.DomainSpec{
		VMID:       vm.ID,
		Name:       vm.Name,
		VCPUs:      vm.Spec.VCPUs,
		MemoryMiB:  vm.Spec.MemoryMiB,
		Disks:      append([]string(nil), vm.Spec.Disks...),
		Generation: vm.Generation,
	}
}

func sameSpec(a, b hypervisor.DomainSpec) bool {
	return a.VMID == b.VMID && a.Name == b.Name && a.VCPUs == b.VCPUs &&
		a.MemoryMiB == b.MemoryMiB && a.Generation == b.Generation && slices.Equal(a.Disks, b.Disks)
}

// qemuMayRun reports whether a domain in this state may have a qemu process.
func qemuMayRun(state string) bool {
	return state != hypervisor.StateStopped && state != hypervisor.StateCrashed
}

// adopted reports whether a domain with an older generation arrived here by
// live migration and belongs to the current placement (the servers name its
// generation in AdoptGeneration): it is kept and its metadata updated.
func adopted(vm api.DesiredVM, d hypervisor.Domain) bool {
	return vm.AdoptGeneration != 0 && d.Meta != nil && d.Meta.Generation == vm.AdoptGeneration
}

// Plan decides what to do to libvirt so that it matches the desired VMs. It
// is a pure function of its inputs: no clock, no I/O. See chime/agent/DESIGN.md.
//
// Rules:
//   - a domain without chime metadata is never touched;
//   - a chime domain whose VM is not desired here, or whose generation is
//     older than the desired one, is stale: destroyed (when qemu may run) and
//     undefined; every stale step comes before any other step;
//   - a desired VM is defined with its current spec and metadata (redefined
//     when the spec or generation changed);
//   - desired running: started when not running (also after a crash);
//     desired stopped: shut down when running;
//   - drained: nothing is started, every running chime domain is shut down;
//   - a domain newer than the desired placement, or in Hold, is left alone;
//   - a domain whose generation is the desired VM's AdoptGeneration arrived
//     by live migration: it is not stale, it is redefined with the new
//     generation (libvirt updates the running domain's metadata too).
func Plan(desired []api.DesiredVM, domains []hypervisor.Domain, opts PlanOptions) []Action {
	if opts.Isolated {
		return planIsolated(domains)
	}
	want := make(map[string]api.DesiredVM, len(desired))
	for _, vm := range desired {
		want[vm.ID] = vm
	}
	byUUID := make(map[string]hypervisor.Domain, len(domains))
	for _, d := range domains {
		byUUID[strings.ToLower(d.UUID)] = d
	}
	hold := make(map[string]bool, len(opts.Hold))
	for _, id := range opts.Hold {
		hold[strings.ToLower(id)] = true
	}

	var out []Action
	// Existing chime domains: stale copies, and drain shutdowns of domains
	// not desired running (desired ones are handled below).
	for _, d := range domains {
		if d.Meta == nil {
			continue
		}
		id := strings.ToLower(d.UUID)
		if hold[id] || hold[strings.ToLower(d.Meta.VMID)] {
			if opts.Drained && d.State == hypervisor.StateRunning {
				out = append(out, Action{Kind: ActionShutdown, VMID: d.UUID, Name: d.Name, Generation: d.Meta.Generation, Reason: "node locally drained (held domain)"})
			}
			continue
		}
		vm, ok := want[id]
		stale := ""
		switch {
		case !ok:
			stale = "not placed on this node"
		case d.Meta.VMID != "" && !strings.EqualFold(d.Meta.VMID, d.UUID):
			stale = fmt.Sprintf("metadata names vm %s", d.Meta.VMID)
		case d.Meta.Generation < vm.Generation && !adopted(vm, d):
			stale = fmt.Sprintf("generation %d older than placement %d", d.Meta.Generation, vm.Generation)
		}
		if stale == "" {
			continue
		}
		if qemuMayRun(d.State) {
			out = append(out, Action{Kind: ActionDestroyStale, VMID: d.UUID, Name: d.Name, Generation: d.Meta.Generation, Reason: stale})
		}
		out = append(out, Action{Kind: ActionUndefineStale, VMID: d.UUID, Name: d.Name, Generation: d.Meta.Generation, Reason: stale})
	}

	for _, vm := range desired {
		id := strings.ToLower(vm.ID)
		if hold[id] {
			continue // its domain, if any, was handled above
		}
		spec := DomainSpecOf(vm)
		name := hypervisor.DomainName(vm.Name)
		d, exists := byUUID[id]
		if exists && d.Meta == nil {
			out = append(out, Action{Kind: ActionConflict, VMID: vm.ID, Name: d.Name, Generation: vm.Generation,
				Reason: "a domain without chime metadata holds this uuid"})
			continue
		}
		if exists && d.Meta.Generation > vm.Generation {
			out = append(out, Action{Kind: ActionConflict, VMID: vm.ID, Name: d.Name, Generation: vm.Generation,
				Reason: fmt.Sprintf("domain generation %d is newer than placement %d", d.Meta.Generation, vm.Generation)})
			if opts.Drained && d.State == hypervisor.StateRunning {
				out = append(out, Action{Kind: ActionShutdown, VMID: d.UUID, Name: d.Name, Generation: d.Meta.Generation, Reason: "node locally drained"})
			}
			continue
		}
		// A stale copy of this VM (older generation) is being removed above:
		// from here on it counts as absent.
		if exists && (d.Meta.Generation < vm.Generation && !adopted(vm, d) || !strings.EqualFold(d.Meta.VMID, d.UUID) && d.Meta.VMID != "") {
			exists = false
		}
		running := exists && qemuMayRun(d.State)

		if !exists {
			out = append(out, Action{Kind: ActionDefine, VMID: vm.ID, Name: name, Generation: vm.Generation, Spec: &spec, Reason: "not defined"})
		} else if def, ok := opts.Defined[vm.ID]; !ok || !sameSpec(def, spec) {
			reason := "spec changed"
			if !ok {
				reason = "definition not recorded"
			}
			out = append(out, Action{Kind: ActionDefine, VMID: vm.ID, Name: name, Generation: vm.Generation, Spec: &spec, Reason: reason})
		}

		switch {
		case running && (opts.Drained || vm.DesiredState != structs.DesiredRunning):
			if d.State != hypervisor.StateRunning {
				continue // already shutting down
			}
			reason := "desired stopped"
			if opts.Drained {
				reason = "node locally drained"
			}
			out = append(out, Action{Kind: ActionShutdown, VMID: vm.ID, Name: name, Generation: vm.Generation, Reason: reason})
		case !running && vm.DesiredState == structs.DesiredRunning && !opts.Drained:
			reason := "not running"
			if exists && d.State == hypervisor.StateCrashed {
				reason = "crashed"
			} else if !exists {
				reason = "new"
			}
			out = append(out, Action{Kind: ActionStart, VMID: vm.ID, Name: name, Generation: vm.Generation, Reason: reason})
		}
	}

	sort.SliceStable(out, func(i, j int) bool {
		if kindOrder[out[i].Kind] != kindOrder[out[j].Kind] {
			return kindOrder[out[i].Kind] < kindOrder[out[j].Kind]
		}
		return out[i].VMID < out[j].VMID
	})
	return out
}

// planIsolated is the plan of an isolated node: kill every chime domain
// whose qemu may run, in VM id order, and nothing else.
func planIsolated(domains []hypervisor.Domain) []Action {
	var out []Action
	for _, d := range domains {
		if d.Meta == nil || !qemuMayRun(d.State) {
			continue
		}
		out = append(out, Action{Kind: ActionIsolate, VMID: d.UUID, Name: d.Name, Generation: d.Meta.Generation,
			Reason: "isolated: no heartbeat acknowledged for the isolation lease"})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].VMID < out[j].VMID })
	return out
}
