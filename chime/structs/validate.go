package structs

import (
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Limits on operator and agent input. They are checked where input enters
// (the API endpoints), never inside the FSM: a limit changed in a new
// version must not make old and new servers apply the same log entry
// differently.
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
	MaxNodeVCPUs   = 1 << 16
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

// ValidateLabels checks label keys and values.
func ValidateLabels(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return Invalid(field, "at most %d labels, got %d", MaxLabels, len(labels))
	}
	// Keys in order, so that a request with several bad labels is always
	// refused naming the same one (the answer must not depend on map order).
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		if k == "" || len(k) > MaxLabelLen || len(v) > MaxLabelLen {
			return Invalid(field, "label %q: keys must be 1..%d and values at most %d characters", k, MaxLabelLen, MaxLabelLen)
		}
		if strings.ContainsAny(k+v, "\x00\n") {
			return Invalid(field, "label %q: control characters are not allowed", k)
		}
	}
	return nil
}

// Validate checks a VM spec against the limits. Field names are the JSON
// names of the create request.
func (s VMSpec) Validate() error {
	if s.VCPUs < MinVCPUs || s.VCPUs > MaxVCPUs {
		return Invalid("vcpus", "must be between %d and %d, got %d", MinVCPUs, MaxVCPUs, s.VCPUs)
	}
	if s.MemoryMiB < MinMemoryMiB {
		return Invalid("memory_mib", "must be at least %d MiB, got %d", MinMemoryMiB, s.MemoryMiB)
	}
	if s.MemoryMiB > MaxMemoryMiB {
		return Invalid("memory_mib", "must be at most %d MiB, got %d", MaxMemoryMiB, s.MemoryMiB)
	}
	if len(s.Disks) > MaxDisks {
		return Invalid("disks", "at most %d disks, got %d", MaxDisks, len(s.Disks))
	}
	seen := map[string]bool{}
	for i, d := range s.Disks {
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
	if err := ValidateLabels("labels", s.Labels); err != nil {
		return err
	}
	if s.AntiAffinity != "" {
		if err := ValidateName("anti_affinity", s.AntiAffinity); err != nil {
			return err
		}
	}
	if !ValidPriority(s.Priority) {
		return Invalid("priority", "must be high, medium or low, got %q", s.Priority)
	}
	return nil
}

// ValidateObservedState checks that an agent-reported VM state is one of
// running, stopped or crashed.
func ValidateObservedState(s string) bool {
	switch s {
	case StateRunning, StateStopped, StateCrashed:
		return true
	}
	return false
}
