package api

import "github.com/chime-ha/chime/chime/structs"

// Validate checks a VM creation request.
func (r *CreateVMRequest) Validate() error {
	if err := structs.ValidateName("name", r.Name); err != nil {
		return err
	}
	return r.Spec().Validate()
}

// Spec is the VM spec the request asks for.
func (r *CreateVMRequest) Spec() structs.VMSpec {
	return structs.VMSpec{VCPUs: r.VCPUs, MemoryMiB: r.Memory, Disks: r.Disks, HA: r.HA, Labels: r.Labels, AntiAffinity: r.Group, Priority: r.Priority}
}

// Validate checks an agent registration.
func (r *RegisterRequest) Validate() error {
	if err := structs.ValidateUUID("id", r.ID); err != nil {
		return err
	}
	if err := structs.ValidateName("name", r.Name); err != nil {
		return err
	}
	if r.APIAddr == "" {
		return structs.Invalid("api_addr", "is required")
	}
	if r.VCPUs < 1 || r.VCPUs > structs.MaxNodeVCPUs {
		return structs.Invalid("vcpus", "must be between 1 and %d, got %d", structs.MaxNodeVCPUs, r.VCPUs)
	}
	if r.MemoryMiB < structs.MinMemoryMiB {
		return structs.Invalid("memory_mib", "must be at least %d, got %d", structs.MinMemoryMiB, r.MemoryMiB)
	}
	if !structs.ValidIsolationResponse(r.IsolationResponse) {
		return structs.Invalid("isolation_response", "must be stop or keep, got %q", r.IsolationResponse)
	}
	if r.IsolationLease < 0 || r.IsolationLease > structs.MaxIsolationLease {
		return structs.Invalid("isolation_lease", "must be between 0 and %s, got %s", structs.MaxIsolationLease, r.IsolationLease)
	}
	if r.IsolationResponse == structs.IsolationStop && r.IsolationLease < structs.MinIsolationLease {
		return structs.Invalid("isolation_lease", "must be at least %s with isolation response stop, got %s", structs.MinIsolationLease, r.IsolationLease)
	}
	return structs.ValidateLabels("labels", r.Labels)
}

// Validate checks a heartbeat body.
func (r *HeartbeatRequest) Validate() error {
	if err := structs.ValidateUUID("node_id", r.NodeID); err != nil {
		return err
	}
	if len(r.Faults) > structs.MaxFaults {
		return structs.Invalid("faults", "at most %d faults, got %d", structs.MaxFaults, len(r.Faults))
	}
	if len(r.VMs) > structs.MaxObservedVMs {
		return structs.Invalid("vms", "at most %d observations, got %d", structs.MaxObservedVMs, len(r.VMs))
	}
	for i, o := range append(append([]structs.VMObservation{}, r.VMs...), r.Adopted...) {
		if err := structs.ValidateUUID("vms", o.VMID); err != nil {
			return structs.Invalid("vms", "item %d: %v", i, err)
		}
		if !structs.ValidateObservedState(o.State) {
			return structs.Invalid("vms", "item %d: state %q must be running, stopped or crashed", i, o.State)
		}
		if len(o.Proof) > 64 {
			return structs.Invalid("adopted", "item %d: proof is at most 64 characters, got %d", i, len(o.Proof))
		}
	}
	switch r.LocalDrainState {
	case "", structs.LocalDraining, structs.LocalDrainDone:
	default:
		return structs.Invalid("local_drain_state", "%q must be draining, drained or empty", r.LocalDrainState)
	}
	if len(r.Adopted) > structs.MaxObservedVMs {
		return structs.Invalid("adopted", "at most %d adoptions, got %d", structs.MaxObservedVMs, len(r.Adopted))
	}
	if len(r.Migrations) > structs.MaxObservedVMs {
		return structs.Invalid("migrations", "at most %d migrations, got %d", structs.MaxObservedVMs, len(r.Migrations))
	}
	for i, m := range r.Migrations {
		if err := structs.ValidateUUID("migrations", m.VMID); err != nil {
			return structs.Invalid("migrations", "item %d: %v", i, err)
		}
		if !structs.ValidLocalMigrationOutcome(m.Outcome) {
			return structs.Invalid("migrations", "item %d: outcome %q must be succeeded, failed or unknown", i, m.Outcome)
		}
		if m.Outcome == "" {
			continue // an agent that predates outcomes
		}
		if m.Generation == 0 {
			return structs.Invalid("migrations", "item %d: generation must be > 0", i)
		}
		if err := structs.ValidateUUID("migrations", m.FromNode); err != nil {
			return structs.Invalid("migrations", "item %d: from_node: %v", i, err)
		}
		if err := structs.ValidateUUID("migrations", m.ToNode); err != nil {
			return structs.Invalid("migrations", "item %d: to_node: %v", i, err)
		}
		if m.ToNode == m.FromNode {
			return structs.Invalid("migrations", "item %d: to_node is from_node", i)
		}
	}
	for _, l := range []struct {
		field string
		refs  []structs.AdoptionRef
	}{{"announced", r.Announced}, {"expired_adoptions", r.ExpiredAdoptions}} {
		if len(l.refs) > structs.MaxObservedVMs {
			return structs.Invalid(l.field, "at most %d adoptions, got %d", structs.MaxObservedVMs, len(l.refs))
		}
		for i, c := range l.refs {
			if err := structs.ValidateUUID(l.field, c.VMID); err != nil {
				return structs.Invalid(l.field, "item %d: %v", i, err)
			}
			if c.Generation == 0 {
				return structs.Invalid(l.field, "item %d: generation must be > 0", i)
			}
		}
	}
	if len(r.StaleDestroyed) > structs.MaxObservedVMs {
		return structs.Invalid("stale_destroyed", "at most %d copies, got %d", structs.MaxObservedVMs, len(r.StaleDestroyed))
	}
	for i, o := range r.StaleDestroyed {
		if err := structs.ValidateUUID("stale_destroyed", o.VMID); err != nil {
			return structs.Invalid("stale_destroyed", "item %d: %v", i, err)
		}
	}
	return nil
}
