package api

import (
	"regexp"
	"unicode/utf8"

	"github.com/chime-ha/chime/chime/structs"
)

// Bounds on the strings agents send (the list bounds are in structs).
// An agent shortens what it sends to them (Truncate), so that a long
// libvirt error never makes its report refused.
const (
	MaxVersionLen = 64   // agent_version
	MaxFaultLen   = 512  // one fault
	MaxReasonLen  = 64   // a libvirt state reason
	MaxErrorLen   = 4096 // a migration report's error
	MaxIDLen      = 128  // task ids, local drain ids (request ids)
	MaxProofLen   = 64   // an adoption proof
)

// Truncate shortens s to at most n bytes (at a rune boundary).
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Validate checks a migration report of an agent.
func (r *MigrationReport) Validate() error {
	if err := structs.ValidateUUID("vm_id", r.VMID); err != nil {
		return err
	}
	if len(r.TaskID) > MaxIDLen {
		return structs.Invalid("task_id", "at most %d characters, got %d", MaxIDLen, len(r.TaskID))
	}
	if len(r.Error) > MaxErrorLen {
		return structs.Invalid("error", "at most %d characters, got %d", MaxErrorLen, len(r.Error))
	}
	return nil
}

func validateObservations(field string, obs []structs.VMObservation) error {
	if len(obs) > structs.MaxObservedVMs {
		return structs.Invalid(field, "at most %d items, got %d", structs.MaxObservedVMs, len(obs))
	}
	for i, o := range obs {
		if err := structs.ValidateUUID(field, o.VMID); err != nil {
			return structs.Invalid(field, "item %d: %v", i, err)
		}
		if !structs.ValidateObservedState(o.State) {
			return structs.Invalid(field, "item %d: state %q must be running, stopped or crashed", i, o.State)
		}
		if len(o.Reason) > MaxReasonLen {
			return structs.Invalid(field, "item %d: reason is at most %d characters, got %d", i, MaxReasonLen, len(o.Reason))
		}
		if len(o.Proof) > MaxProofLen {
			return structs.Invalid(field, "item %d: proof is at most %d characters, got %d", i, MaxProofLen, len(o.Proof))
		}
	}
	return nil
}

// ifaceRE is a Linux interface name (IFNAMSIZ-1 = 15 characters).
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)

// machineIDRE is systemd's machine id (machine-id(5)).
var machineIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

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
	if err := ValidateHostPort("api_addr", r.APIAddr); err != nil {
		return err
	}
	if r.GossipAddr != "" {
		if err := ValidateHostPort("gossip_addr", r.GossipAddr); err != nil {
			return err
		}
	}
	if r.MigrationURI != "" {
		if err := ValidateMigrationURI("migration_uri", r.MigrationURI); err != nil {
			return err
		}
	}
	if r.MigrationAddr != "" {
		if err := ValidateHost("migration_addr", r.MigrationAddr); err != nil {
			return err
		}
	}
	if r.BusinessInterface != "" && !ifaceRE.MatchString(r.BusinessInterface) {
		return structs.Invalid("business_interface", "%q is not an interface name (1..15 of letters, digits, '.', '_', '-')", r.BusinessInterface)
	}
	if len(r.AgentVersion) > MaxVersionLen {
		return structs.Invalid("agent_version", "at most %d characters, got %d", MaxVersionLen, len(r.AgentVersion))
	}
	if len(r.Secret) > 128 {
		return structs.Invalid("secret", "at most 128 characters, got %d", len(r.Secret))
	}
	if r.HostUUID != "" {
		if err := structs.ValidateUUID("host_uuid", r.HostUUID); err != nil {
			return err
		}
	}
	if r.MachineID != "" && !machineIDRE.MatchString(r.MachineID) {
		return structs.Invalid("machine_id", "%q is not a machine id (32 lowercase hex characters, as in /etc/machine-id)", r.MachineID)
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
	if r.IsolationStopBound < 0 || r.IsolationStopBound > structs.MaxLeaseMargin {
		return structs.Invalid("isolation_stop_bound", "must be between 0 and %s, got %s", structs.MaxLeaseMargin, r.IsolationStopBound)
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
	for i, f := range r.Faults {
		if f == "" || len(f) > MaxFaultLen {
			return structs.Invalid("faults", "fault %d: 1..%d characters, got %d", i, MaxFaultLen, len(f))
		}
	}
	for _, l := range []struct {
		field string
		obs   []structs.VMObservation
	}{{"vms", r.VMs}, {"adopted", r.Adopted}, {"stale_destroyed", r.StaleDestroyed}} {
		if err := validateObservations(l.field, l.obs); err != nil {
			return err
		}
	}
	if len(r.LocalDrainID) > MaxIDLen {
		return structs.Invalid("local_drain_id", "at most %d characters, got %d", MaxIDLen, len(r.LocalDrainID))
	}
	switch r.LocalDrainState {
	case "", structs.LocalDraining, structs.LocalDrainDone:
	default:
		return structs.Invalid("local_drain_state", "%q must be draining, drained or empty", r.LocalDrainState)
	}
	if len(r.Migrations) > structs.MaxObservedVMs {
		return structs.Invalid("migrations", "at most %d migrations, got %d", structs.MaxObservedVMs, len(r.Migrations))
	}
	for i, m := range r.Migrations {
		if err := structs.ValidateUUID("migrations", m.VMID); err != nil {
			return structs.Invalid("migrations", "item %d: %v", i, err)
		}
		if len(m.ToAddr) > MaxHostLen+8 {
			return structs.Invalid("migrations", "item %d: to_addr is at most %d characters, got %d", i, MaxHostLen+8, len(m.ToAddr))
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
	return nil
}
