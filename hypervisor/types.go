package hypervisor

import (
	"errors"
	"time"
)

// ErrNotFound is returned when libvirt has no domain with the given UUID.
var ErrNotFound = errors.New("domain not found")

// ErrDisconnected is returned when the libvirt connection is down.
var ErrDisconnected = errors.New("libvirt disconnected")

// ErrDiskLocked is returned by Start when a disk of the domain is in use by
// another qemu: libvirt's lock manager (virtlockd) refused the disk's lease,
// or qemu could not take its own lock on the image. On shared storage this
// means the disk runs on another host (uniqueness rule 12): retrying soon
// cannot help, only that copy stopping can.
var ErrDiskLocked = errors.New("disk locked by another qemu")

// ErrForeign is returned when Define would overwrite a domain that has no
// chime metadata: such a domain belongs to someone else and is never touched.
var ErrForeign = errors.New("domain has no chime metadata")

// Domain states as chime names them (mapped from libvirt's).
const (
	StateRunning = "running" // running, paused, blocked, pmsuspended: a qemu process exists
	StateStopped = "stopped" // shut off normally
	StateCrashed = "crashed" // shut off (crashed) or crashed
	StateOther   = "other"   // shutting down, no state
)

// Meta is the chime metadata element stored in a domain's XML
// (<metadata><chime:vm xmlns:chime="https://chime.dev/xmlns/vm/1" id=".." generation=".."/></metadata>).
type Meta struct {
	VMID       string
	Generation uint64
}

// Domain is one libvirt domain as the driver lists it.
type Domain struct {
	UUID   string // libvirt domain UUID; equals the VM id for chime domains
	Name   string // chime-<vm name> for chime domains
	State  string // StateRunning, StateStopped, StateCrashed, StateOther
	Reason string // libvirt's state reason, e.g. "booted", "migrated", "crashed", "destroyed"
	Meta   *Meta  // nil when the domain has no chime metadata: never touch it
}

// DomainSpec is what the agent wants defined.
type DomainSpec struct {
	VMID       string
	Name       string // VM name; the domain is named "chime-" + Name
	VCPUs      int
	MemoryMiB  int
	Disks      []string // absolute paths of disk images
	Generation uint64
}

// DomainName is the libvirt name of a VM's domain.
func DomainName(vmName string) string { return "chime-" + vmName }

// EventKind says what a lifecycle event reports.
type EventKind string

// Event kinds.
const (
	EventLifecycle    EventKind = "lifecycle"   // a domain changed state
	EventReconnected  EventKind = "reconnected" // the connection was re-established: do a full reconcile
	EventDisconnected EventKind = "disconnected"
)

// Event is a libvirt lifecycle notification.
type Event struct {
	Kind   EventKind
	UUID   string
	Detail string // e.g. "started", "stopped", "crashed"
	Reason string // libvirt's event detail, e.g. "booted", "destroyed", "failed", "migrated"
	At     time.Time
}
