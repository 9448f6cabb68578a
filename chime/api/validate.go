package api

import (
	"path/filepath"
	"regexp"
	"strings"
)

// Limits on operator input.
const (
	MinVCPUs       = 1
	MaxVCPUs       = 256
	MinMemoryMiB   = 16
	MaxMemoryMiB   = 16 << 20 // 16 TiB
	MaxNameLen     = 63
	MaxDisks       = 16
	MaxLabels      = 64
	MaxLabelLen    = 253
	MaxBodyBytes   = 1 << 20 // 1 MiB per API request body
	MaxFaults      = 32
	MaxObservedVMs = 4096
)

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidateName checks DNS-label syntax (RFC 1123): 1..63 lowercase letters,
// digits and hyphens, starting and ending with a letter or digit.
func ValidateName(field, name string) error {
	if name == "" {
		return Invalid(field, "is required")
	}
	if len(name) > MaxNameLen {
		return Invalid(field, "must be at most %d characters, got %d", MaxNameLen, len(name))
	}
	if !labelRE.MatchString(name) {
		return Invalid(field, "%q is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)", name)
	}
	return nil
}

// IsUUID reports whether s is a canonical lowercase uuid.
func IsUUID(s string) bool { return uuidRE.MatchString(s) }

// ValidateUUID checks that s is a canonical lowercase uuid.
func ValidateUUID(field, s string) error {
	if !IsUUID(s) {
		return Invalid(field, "%q is not a uuid (8-4-4-4-12 lowercase hex)", s)
	}
	return nil
}

// Validate checks a VM creation request.
func (r *CreateVMRequest) Validate() error {
	if err := ValidateName("name", r.Name); err != nil {
		return err
	}
	if r.VCPUs < MinVCPUs || r.VCPUs > MaxVCPUs {
		return Invalid("vcpus", "must be between %d and %d, got %d", MinVCPUs, MaxVCPUs, r.VCPUs)
	}
	if r.Memory < MinMemoryMiB {
		return Invalid("memory_mib", "must be at least %d MiB, got %d", MinMemoryMiB, r.Memory)
	}
	if r.Memory > MaxMemoryMiB {
		return Invalid("memory_mib", "must be at most %d MiB, got %d", MaxMemoryMiB, r.Memory)
	}
	if len(r.Disks) > MaxDisks {
		return Invalid("disks", "at most %d disks, got %d", MaxDisks, len(r.Disks))
	}
	seen := map[string]bool{}
	for i, d := range r.Disks {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d {
			return Invalid("disks", "disk %d: %q must be an absolute, clean path", i, d)
		}
		if strings.ContainsAny(d, "\x00'\"<>&") {
			return Invalid("disks", "disk %d: %q contains a forbidden character", i, d)
		}
		if seen[d] {
			return Invalid("disks", "disk %q given twice", d)
		}
		seen[d] = true
	}
	if err := ValidateLabels("labels", r.Labels); err != nil {
		return err
	}
	if r.Group != "" {
		if err := ValidateName("anti_affinity", r.Group); err != nil {
			return err
		}
	}
	return nil
}

// ValidateLabels checks label keys and values.
func ValidateLabels(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return Invalid(field, "at most %d labels, got %d", MaxLabels, len(labels))
	}
	for k, v := range labels {
		if k == "" || len(k) > MaxLabelLen || len(v) > MaxLabelLen {
			return Invalid(field, "label %q: keys must be 1..%d and values at most %d characters", k, MaxLabelLen, MaxLabelLen)
		}
		if strings.ContainsAny(k+v, "\x00\n") {
			return Invalid(field, "label %q: control characters are not allowed", k)
		}
	}
	return nil
}

// Validate checks an agent registration.
func (r *RegisterRequest) Validate() error {
	if err := ValidateUUID("id", r.ID); err != nil {
		return err
	}
	if err := ValidateName("name", r.Name); err != nil {
		return err
	}
	if r.APIAddr == "" {
		return Invalid("api_addr", "is required")
	}
	if r.VCPUs < 1 || r.VCPUs > 1<<16 {
		return Invalid("vcpus", "must be between 1 and 65536, got %d", r.VCPUs)
	}
	if r.MemoryMiB < MinMemoryMiB {
		return Invalid("memory_mib", "must be at least %d, got %d", MinMemoryMiB, r.MemoryMiB)
	}
	return ValidateLabels("labels", r.Labels)
}

// Validate checks a heartbeat body.
func (r *HeartbeatRequest) Validate() error {
	if err := ValidateUUID("node_id", r.NodeID); err != nil {
		return err
	}
	if len(r.Faults) > MaxFaults {
		return Invalid("faults", "at most %d faults, got %d", MaxFaults, len(r.Faults))
	}
	if len(r.VMs) > MaxObservedVMs {
		return Invalid("vms", "at most %d observations, got %d", MaxObservedVMs, len(r.VMs))
	}
	for i, o := range append(append([]VMObservation{}, r.VMs...), r.Adopted...) {
		if err := ValidateUUID("vms", o.VMID); err != nil {
			return Invalid("vms", "item %d: %v", i, err)
		}
		switch o.State {
		case StateRunning, StateStopped, StateCrashed:
		default:
			return Invalid("vms", "item %d: state %q must be running, stopped or crashed", i, o.State)
		}
	}
	return nil
}
