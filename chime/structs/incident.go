package structs

import "time"

// Incident states.
const (
	IncidentOpen     = "open"
	IncidentResolved = "resolved"
)

// Incident kinds: what opened it.
const (
	IncidentNodeUnreachable    = "node_unreachable"    // the node's monitor state became unreachable
	IncidentNodeError          = "node_error"          // the node reported faults
	IncidentVMHeld             = "vm_held"             // a live migration's outcome became unknown
	IncidentVMLost             = "vm_lost"             // automatic HA gave up restarting a VM
	IncidentUniquenessConflict = "uniqueness_conflict" // a copy of a VM ran where it is not placed
)

// Incident is one failure tracked end to end (docs/incidents.md): what
// opened it, every event about its node and VMs while it was open, each
// VM's recovery, and the durations. The FSM opens, extends and resolves
// incidents as a pure function of the events and records each command
// writes, so every server answers the same.
type Incident struct {
	ID       uint64 `json:"id"`
	State    string `json:"state"` // IncidentOpen or IncidentResolved
	Kind     string `json:"kind"`
	NodeID   string `json:"node_id,omitempty"` // the failed node (for a VM incident: where the VM was placed)
	NodeName string `json:"node_name,omitempty"`
	VMID     string `json:"vm_id,omitempty"` // a VM incident's VM
	Summary  string `json:"summary"`
	// FirstEvidence is the failure's first evidence: the last heartbeat
	// the leader had received from an unreachable node (or when it started
	// counting the silence, after an election), else DetectedAt.
	FirstEvidence time.Time `json:"first_evidence"`
	// DetectedAt is when the verdict that opened the incident was
	// committed (the proposer's clock of that command).
	DetectedAt  time.Time `json:"detected_at"`
	OpenedIndex uint64    `json:"opened_index"` // Raft index of that command
	ResolvedAt  time.Time `json:"resolved_at,omitzero"`
	// RecoveredAt is when the last affected VM was running again (or, with
	// no VM to recover, when the incident resolved).
	RecoveredAt time.Time `json:"recovered_at,omitzero"`
	// TimeToDetect is DetectedAt − FirstEvidence; TimeToRecover is
	// RecoveredAt − FirstEvidence (zero while open). Nanoseconds on the
	// wire.
	TimeToDetect  time.Duration `json:"time_to_detect"`
	TimeToRecover time.Duration `json:"time_to_recover"`
	// Resolution says why it resolved ("node normal, 3 VMs running").
	Resolution string       `json:"resolution,omitempty"`
	VMs        []IncidentVM `json:"vms"`
	// Alarms are the alarms that fired while it was open, by name and
	// fingerprint, with their last status.
	Alarms   []IncidentAlarm `json:"alarms,omitempty"`
	Timeline []IncidentEntry `json:"timeline"`
	// Dropped counts the timeline entries not kept (MaxIncidentTimeline).
	Dropped     int    `json:"dropped,omitempty"`
	ModifyIndex uint64 `json:"modify_index"`
}

// MaxIncidentTimeline bounds an incident's timeline: later entries are
// counted in Dropped, except the VM recoveries and the resolution.
const MaxIncidentTimeline = 300

// IncidentVM is one VM an incident affects: desired running on the failed
// node when it opened (or the VM that opened it), and how it recovered.
type IncidentVM struct {
	VMID        string    `json:"vm_id"`
	Name        string    `json:"name"`
	HA          bool      `json:"ha"`
	RecoveredAt time.Time `json:"recovered_at,omitzero"`
	// Outcome is how it recovered: VMRecoveredRunning (on RecoveredOn),
	// VMRecoveredStopped (an operator stopped it), VMRecoveredDeleted.
	Outcome     string `json:"outcome,omitempty"`
	RecoveredOn string `json:"recovered_on,omitempty"` // node id
}

// How an incident's VM recovered.
const (
	VMRecoveredRunning = "running"
	VMRecoveredStopped = "stopped"
	VMRecoveredDeleted = "deleted"
)

// IncidentAlarm is an alarm that fired during an incident.
type IncidentAlarm struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	Status      string `json:"status"` // firing or resolved
}

// IncidentEntry is one line of an incident's timeline. EventSeq names
// the event it comes from (0 for entries the FSM derived from the state:
// a VM seen running again, the resolution).
type IncidentEntry struct {
	Time     time.Time `json:"time"`
	Index    uint64    `json:"index"`
	EventSeq uint64    `json:"event_seq,omitempty"`
	Kind     string    `json:"kind"`
	NodeID   string    `json:"node_id,omitempty"`
	VMID     string    `json:"vm_id,omitempty"`
	TaskID   string    `json:"task_id,omitempty"`
	Actor    string    `json:"actor,omitempty"` // who, for an audited operator write
	Message  string    `json:"message"`
}

// Timeline entry kinds the FSM derives (the others are event kinds).
const (
	IncidentEntryOpened    = "incident.opened"
	IncidentEntryRecovered = "incident.vm_recovered"
	IncidentEntryResolved  = "incident.resolved"
)

// ValidIncidentState reports whether s is a state filter ("" is any).
func ValidIncidentState(s string) bool {
	return s == "" || s == IncidentOpen || s == IncidentResolved
}
