package structs

import "time"

// Node management states (set by operators).
const (
	NodeEnabled  = "enabled"
	NodeDisabled = "disabled"
	NodeDrained  = "drained"
)

// Node monitor states (set by the leader's node monitor).
const (
	MonitorNormal      = "normal"
	MonitorUnreachable = "unreachable"
	MonitorError       = "error"
)

// VM desired states.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// Local drain states (Node.LocalDrainState, the agent's status): draining
// until every chime domain is stopped, then drained.
const (
	LocalDraining  = "draining"
	LocalDrainDone = "drained"
)

// VM observed states, as shown by `chime vm list`.
const (
	StateRunning = "running"
	StateStopped = "stopped"
	StateCrashed = "crashed"
	StatePending = "pending" // not placed on any node yet
	StateUnknown = "unknown" // no observation from the node it is placed on
	// StateHeld: a live migration's outcome is unknown; the VM is started
	// nowhere until a host proves where it runs (uniqueness rule 8).
	StateHeld = "held"
	// StateOther: the node reports a state between the others (libvirt's
	// shutting down, no state).
	StateOther = "other"
)

// VMStates are the states a VM is shown in (the filter of `chime vm list
// --state`).
var VMStates = []string{StateRunning, StateStopped, StateCrashed, StatePending, StateUnknown, StateHeld, StateOther}

// MigrationOutcomeUnknown is Migration.Outcome while nobody knows where a
// live-migrated VM runs (uniqueness rule 8).
const MigrationOutcomeUnknown = "unknown"

// NodeUsage is what the VMs placed on one node take: a view derived from
// the VMs (fsm/view), never stored.
type NodeUsage struct {
	VMs       int
	VCPUs     int64
	MemoryMiB int64
	Groups    map[string]int // anti-affinity group → VMs of it on the node
}

// Node describes one hypervisor as the servers know it.
type Node struct {
	ID                string            `json:"id"`
	Name              string            `json:"name"`
	APIAddr           string            `json:"api_addr"`           // host:port of the agent's API (ping-back)
	GossipAddr        string            `json:"gossip_addr"`        // host:port of the agent's memberlist
	MigrationURI      string            `json:"migration_uri"`      // libvirt URI peers migrate to, e.g. qemu+tcp://10.0.0.2/system
	MigrationAddr     string            `json:"migration_addr"`     // address for qemu's migration stream (--migrateuri tcp://ADDR)
	BusinessInterface string            `json:"business_interface"` // NIC carrying guest traffic
	VCPUs             int               `json:"vcpus"`              // capacity
	MemoryMiB         int               `json:"memory_mib"`         // capacity
	Labels            map[string]string `json:"labels,omitempty"`
	AgentVersion      string            `json:"agent_version"`

	ManagementState string    `json:"management_state"`
	MonitorState    string    `json:"monitor_state"`
	Faults          []string  `json:"faults,omitempty"`
	StateSince      time.Time `json:"state_since"`                 // when monitor_state last changed (leader's clock, carried in the command)
	LocalDrained    bool      `json:"local_drained"`               // a heartbeat proved the local drain done (`chime agent drain`, every VM stopped)
	LocalDrainState string    `json:"local_drain_state,omitempty"` // LocalDraining or LocalDrainDone; empty without a local drain
	LocalDrainID    string    `json:"local_drain_id,omitempty"`    // id of the agent's current local drain
	ReleasedDrainID string    `json:"released_drain_id,omitempty"` // local drain the operator released with node enable
	DrainAcked      bool      `json:"drain_acked"`                 // a heartbeat sent after the agent applied the drain listed every VM stopped
	DrainIndex      uint64    `json:"drain_index,omitempty"`       // Raft index at which management became drained (a drain ack needs a desired index at least this)
	Fenced          bool      `json:"fenced"`                      // an operator or fence command confirmed the node runs nothing
	// FencedAt is when a fence command (or `chime node fence`) last
	// succeeded on the node (leader's clock, carried in the command); zero
	// when only an operator's --confirm-fenced set Fenced. Automatic HA
	// takes Fenced as evidence only while the node has stayed unreachable
	// since then (StateSince not after FencedAt).
	FencedAt time.Time `json:"fenced_at,omitzero"`
	// IsolationResponse is what the node's agent does when it hears no
	// server for IsolationLease: IsolationStop or IsolationKeep ("" from
	// agents that predate it: keep). Durations only cross the wire.
	IsolationResponse string        `json:"isolation_response,omitempty"`
	IsolationLease    time.Duration `json:"isolation_lease,omitempty"`
	// IsolationStopBound is the agent's bound on the time it needs to stop
	// every VM once its lease ran out (0 from agents that predate it:
	// DefaultStopBound). The servers count the lease only if it is at most
	// their margin.
	IsolationStopBound time.Duration `json:"isolation_stop_bound,omitempty"`
	// Watchdog says the agent armed a watchdog device that resets the host
	// when the agent stops petting it (hung or dead agent, or lease lost).
	Watchdog bool `json:"watchdog,omitempty"`
	// SecretReset: an operator allowed the next registration of this node
	// id to set a new secret (`chime node reset-secret`: the agent lost its
	// data dir). Cleared by that registration.
	SecretReset bool `json:"secret_reset,omitempty"`
	// IdentityConflict is the last evidence that another agent claims this
	// node (uniqueness rule 10): it answered the ping-back at the node's
	// address as another node, or registered as this node from another
	// address while the node was not unreachable. IdentityConflictAt is
	// when it was last seen (leader's clock); the alarm resolves a while
	// after.
	IdentityConflict   string    `json:"identity_conflict,omitempty"`
	IdentityConflictAt time.Time `json:"identity_conflict_at,omitzero"`
	// Binding is the host identity the node is bound to: what its last
	// registration that the servers accepted presented (docs/security.md,
	// "Node identity"). nil for nodes last registered by an older version.
	Binding *NodeBinding `json:"binding,omitempty"`
	// StaleCopies are the copies of VMs placed elsewhere (or at an older
	// generation) that the node's last judged heartbeat listed running, or
	// reported destroyed since the heartbeat before: each is a uniqueness
	// conflict (alarm UniquenessConflict) until a heartbeat shows it gone.
	StaleCopies []StaleCopy `json:"stale_copies,omitempty"`
	// ReturnRefused says why the last heartbeat of an unreachable node did
	// not bring it back (uniqueness rule 9); empty once it returned.
	ReturnRefused string `json:"return_refused,omitempty"`

	CreateIndex uint64 `json:"create_index"`
	ModifyIndex uint64 `json:"modify_index"`
}

// FaultStaleCopy is the fault the servers add to a node whose heartbeat
// lists a running copy of a VM placed elsewhere or at an older
// generation: such a node is never normal (uniqueness rule 9).
const FaultStaleCopy = "runs a stale copy of a VM placed elsewhere"

// StaleCopy is a copy of a VM that runs (or ran until the agent destroyed
// it) on a node the VM is not placed on at that generation.
type StaleCopy struct {
	VMID             string    `json:"vm_id"`
	Generation       uint64    `json:"generation"`                  // the copy's generation
	PlacedOn         string    `json:"placed_on,omitempty"`         // node id of the VM's placement ("" while pending)
	PlacedGeneration uint64    `json:"placed_generation,omitempty"` // the placement's generation
	Destroyed        bool      `json:"destroyed,omitempty"`         // the agent found it running and destroyed it
	Since            time.Time `json:"since"`                       // when the servers first saw it (leader's clock, carried in the command)
	Ended            time.Time `json:"ended,omitzero"`              // when a heartbeat first showed it gone (zero: it runs)
}

// ConflictHold is how long a uniqueness conflict stays recorded (and its
// alarm firing) after the copy was seen gone, so that a copy destroyed
// before any heartbeat listed it still raises an alarm every leader's
// alarmer sees.
const ConflictHold = time.Minute

// Running reports whether the stale copy still runs as far as the
// servers know.
func (c StaleCopy) Running() bool { return c.Ended.IsZero() }

// StaleCopyOn reports whether a copy of the VM with generation gen on
// nodeID is stale: the VM is not placed there at that generation (nor
// adopted), and it is not the incoming copy of a live migration to nodeID.
func (v *VM) StaleCopyOn(nodeID string, gen uint64) bool {
	return !v.IncomingHere(nodeID) && !v.ObservationCurrent(nodeID, gen)
}

// VMSpec is what an operator asks for.
type VMSpec struct {
	VCPUs        int               `json:"vcpus"`
	MemoryMiB    int               `json:"memory_mib"`
	Disks        []string          `json:"disks,omitempty"` // paths of disk images on shared storage
	HA           bool              `json:"ha"`
	Labels       map[string]string `json:"labels,omitempty"`
	AntiAffinity string            `json:"anti_affinity,omitempty"` // VMs with the same group go to different nodes
	// Priority is the restart priority of an ha VM (PriorityHigh,
	// PriorityMedium, PriorityLow; "" is medium): automatic HA restarts
	// higher ones first.
	Priority string `json:"priority,omitempty"`
}

// Observation is what an agent last reported about a VM.
type Observation struct {
	NodeID     string    `json:"node_id"`
	State      string    `json:"state"`  // running, stopped, crashed
	Reason     string    `json:"reason"` // libvirt state reason, e.g. "booted", "migrated", "crashed"
	Generation uint64    `json:"generation"`
	At         time.Time `json:"at"`
}

// VM is one virtual machine as the servers know it.
type VM struct {
	ID           string       `json:"id"`
	Name         string       `json:"name"`
	Spec         VMSpec       `json:"spec"`
	DesiredState string       `json:"desired_state"`
	NodeID       string       `json:"node_id"`    // placement; empty while pending
	Generation   uint64       `json:"generation"` // Raft index of the placement decision
	State        string       `json:"state"`      // derived view: see (*VM).DeriveState
	Observed     *Observation `json:"observed,omitempty"`
	TaskID       string       `json:"task_id,omitempty"`
	// Migration is the live migration in flight, if any.
	Migration *Migration `json:"migration,omitempty"`
	// AdoptGeneration names the older generation whose domain legitimately
	// arrived on the placement node by live migration: the agent there
	// keeps it (updating its metadata) instead of destroying it as stale.
	AdoptGeneration uint64 `json:"adopt_generation,omitempty"`
	// NodeLocal is a node-local migration of the VM (`chime agent
	// migrate`) the servers know of before its outcome moved the
	// placement: announced by the destination's agent, or reported by the
	// source with an unknown outcome. While it is held (HeldByNodeLocal) no
	// rebuild places the VM elsewhere. Any placement move clears it.
	NodeLocal *NodeLocalMigration `json:"node_local,omitempty"`
	// HARestarts are automatic HA's failed attempts to restart the VM away
	// from its current placement (node and generation): replicated so that
	// a new leader goes on counting toward --ha-max-restarts instead of
	// starting again. Any placement move clears it.
	HARestarts  *HARestarts `json:"ha_restarts,omitempty"`
	CreateIndex uint64      `json:"create_index"`
	ModifyIndex uint64      `json:"modify_index"`
}

// HARestarts is the retry state of automatic HA for one placement of a VM.
type HARestarts struct {
	NodeID     string    `json:"node_id"`    // the placement the attempts were away from
	Generation uint64    `json:"generation"` // its generation
	Count      int       `json:"count"`      // failed attempts so far
	GaveUp     bool      `json:"gave_up,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	LastFailed time.Time `json:"last_failed,omitzero"` // the proposer's clock, for operators: no wait is measured on it
}

// DeriveState computes the VM's shown state from placement and observation.
func (v *VM) DeriveState() string {
	if v.NodeID == "" {
		return StatePending
	}
	if v.Held() {
		return StateHeld
	}
	o := v.Observed
	if o == nil || o.NodeID != v.NodeID {
		return StateUnknown
	}
	return o.State
}

// Held reports whether the VM is held: its live migration's outcome is
// unknown, so neither its source nor its destination may start it, and
// nothing places it, until a host proves where it runs (uniqueness rule 8).
func (v *VM) Held() bool {
	return v.Migration != nil && v.Migration.Outcome == MigrationOutcomeUnknown
}

// Migration is a live migration the servers ordered.
type Migration struct {
	TaskID     string `json:"task_id"`
	From       string `json:"from"`
	To         string `json:"to"`
	Generation uint64 `json:"generation"` // placement generation when it started
	// Outcome is empty while the source agent is migrating (or about to),
	// MigrationOutcomeUnknown once the source could not learn the result
	// or the leader gave up waiting for it: the VM is held.
	Outcome string `json:"outcome,omitempty"`
	// UnknownIndex is the Raft index at which the outcome became unknown:
	// the source's word that the VM still runs there counts only from a
	// heartbeat sent after its agent applied a desired state at least this
	// new (which holds the VM there).
	UnknownIndex uint64 `json:"unknown_index,omitempty"`
	// UnknownSince is when the outcome became unknown (the proposer's
	// clock, for operators; no timeout is measured on it).
	UnknownSince time.Time `json:"unknown_since,omitempty"`
	// UnknownReason says why the outcome is unknown.
	UnknownReason string `json:"unknown_reason,omitempty"`
	// SourceAbsentIndex is the Raft index at which the source, after it
	// applied the hold, listed the VM not running with no migration of it
	// in progress. From then on a destination that lists it not running
	// either, in a heartbeat sent after it applied a desired state at
	// least this new, proves that it runs nowhere (MigrationNowhere).
	SourceAbsentIndex uint64 `json:"source_absent_index,omitempty"`
}

// Task kinds and states.
const (
	TaskMigrate  = "migrate"
	TaskEvacuate = "evacuate"
	TaskDrain    = "drain"
	TaskRebuild  = "rebuild"
	TaskAdopt    = "adopt" // a node-local migration the servers refused

	TaskPending   = "pending"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
	TaskCancelled = "cancelled"
)

// TaskStep is one unit of a task (for example: migrate VM x to node y).
type TaskStep struct {
	VMID  string `json:"vm_id"`
	From  string `json:"from,omitempty"`
	To    string `json:"to,omitempty"`
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Task is a replicated operation a new leader resumes.
type Task struct {
	ID          string     `json:"id"`
	Kind        string     `json:"kind"`
	NodeID      string     `json:"node_id,omitempty"`
	VMID        string     `json:"vm_id,omitempty"`
	State       string     `json:"state"`
	Steps       []TaskStep `json:"steps,omitempty"`
	Error       string     `json:"error,omitempty"`
	Created     time.Time  `json:"created"`
	Updated     time.Time  `json:"updated"`
	CreateIndex uint64     `json:"create_index"`
	ModifyIndex uint64     `json:"modify_index"`
}

// Event is one entry of the bounded, sequenced event log.
type Event struct {
	Seq     uint64    `json:"seq"`
	Index   uint64    `json:"index"` // Raft index that produced it
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // e.g. node.registered, node.unreachable, vm.created, vm.placed
	NodeID  string    `json:"node_id,omitempty"`
	VMID    string    `json:"vm_id,omitempty"`
	TaskID  string    `json:"task_id,omitempty"`
	Message string    `json:"message"`
	// Audit is set on events of kind EventAudit only: one write through
	// the API (docs/security.md#audit-log).
	Audit *Audit `json:"audit,omitempty"`
}

// EventAudit is the kind of the audit log's events.
const EventAudit = "audit"

// Audit is who did what through the API, and what came of it. It never
// holds a secret, a token or a request body.
type Audit struct {
	// Actor is who called: "token:<accessor id>", "node:<node id>" (an
	// agent's id, as it claimed it on a refused request), "tls:<role>"
	// (a certificate and no token) or "anonymous".
	Actor string `json:"actor"`
	// Role is the token's role, when the caller sent a known token.
	Role      string `json:"role,omitempty"`
	Method    string `json:"method"`
	Route     string `json:"route"`            // the route pattern, e.g. POST /v1/vms/{id}/{action}
	Path      string `json:"path"`             // the request path, with its target ids
	Source    string `json:"source,omitempty"` // the caller's host (the follower's, for a forwarded request)
	RequestID string `json:"request_id,omitempty"`
	Status    int    `json:"status"`
	Error     string `json:"error,omitempty"`
	// Suppressed counts the refusals from this source that were not
	// recorded (at most one is per source per minute) since the last one
	// that was.
	Suppressed int `json:"suppressed,omitempty"`
}

// Alarm is a firing (or recently resolved) condition.
type Alarm struct {
	Fingerprint string            `json:"fingerprint"`
	Name        string            `json:"name"` // alertname, e.g. NodeUnreachable
	Severity    string            `json:"severity"`
	Labels      map[string]string `json:"labels"`
	Summary     string            `json:"summary"`
	Description string            `json:"description"`
	Status      string            `json:"status"` // firing or resolved
	StartsAt    time.Time         `json:"starts_at"`
	EndsAt      time.Time         `json:"ends_at,omitempty"`
}

// VMObservation is one VM as an agent sees it in libvirt.
type VMObservation struct {
	VMID       string `json:"vm_id"`
	State      string `json:"state"`  // running, stopped, crashed
	Reason     string `json:"reason"` // libvirt reason
	Generation uint64 `json:"generation"`
	// Migrating: a live migration of this domain from here may be in
	// progress (the agent's call to libvirt has not returned, or its
	// hand-over record is open), so "running here" proves nothing about
	// where it will run.
	Migrating bool `json:"migrating,omitempty"`
	// Proof, on an adoption (heartbeat adopted[]), is the source node's
	// AdoptionProof for the VM and generation, as its announcement carried
	// it; empty otherwise.
	Proof string `json:"proof,omitempty"`
}

// LocalMigration is an entry of the source agent's migration log: a
// node-local migration it performed without the servers. The agent keeps
// it until the servers acknowledge having applied it (uniqueness rule 7).
// Entries written before FromNode, ToNode and Outcome existed carry only
// VMID, ToAddr and Generation; the servers then record an event and move
// nothing.
type LocalMigration struct {
	VMID       string `json:"vm_id"`
	ToAddr     string `json:"to_addr"`
	Generation uint64 `json:"generation"` // the generation that left (or tried to)
	// FromNode is the source node (the agent that logged the entry): the
	// servers accept the entry only from that node.
	FromNode string `json:"from_node,omitempty"`
	// ToNode is the destination node's id as its agent named itself when
	// it accepted the announcement.
	ToNode string `json:"to_node,omitempty"`
	// Outcome is libvirt's outcome as the source saw it: succeeded,
	// failed (the domain is still on the source) or unknown (the call
	// failed and the domain is gone from the source).
	Outcome string `json:"outcome,omitempty"`
}

// AdoptionRef names an adoption announced to a node: the VM and the
// generation that leaves its source.
type AdoptionRef struct {
	VMID       string `json:"vm_id"`
	Generation uint64 `json:"generation"`
}

// Outcomes of a node-local migration, as the source's libvirt reported them.
const (
	LocalMigrationSucceeded = "succeeded"
	LocalMigrationFailed    = "failed"
	LocalMigrationUnknown   = "unknown"
)

// ValidLocalMigrationOutcome reports whether o is a known outcome ("" for
// an entry of an agent that predates outcomes).
func ValidLocalMigrationOutcome(o string) bool {
	switch o {
	case "", LocalMigrationSucceeded, LocalMigrationFailed, LocalMigrationUnknown:
		return true
	}
	return false
}

// NodeLocalMigration is what the servers know of a node-local migration
// of a VM whose outcome has not moved the placement yet: the destination
// node, the generation that leaves the source, and the outcome the source
// reported ("" while only announced).
type NodeLocalMigration struct {
	To         string `json:"to"`
	Generation uint64 `json:"generation"`
	Outcome    string `json:"outcome,omitempty"`
}

// HeldByNodeLocal reports whether a node-local migration of the VM whose
// outcome is not known yet holds it: the VM may run on the destination, so
// no rebuild of its placement node may start it elsewhere. A migration the
// source reported failed holds nothing.
func (v *VM) HeldByNodeLocal() bool {
	return v.NodeLocal != nil && v.NodeLocal.Outcome != LocalMigrationFailed
}

// ObservationCurrent is the rule that decides whether an agent's report of
// a VM at generation gen from node nodeID describes the VM's current
// placement: it must come from the placement node, and carry the placement
// generation (or a newer one), or the older generation the placement node
// adopted by live migration. Anything else is a stale copy.
func (v *VM) ObservationCurrent(nodeID string, gen uint64) bool {
	if v.NodeID == "" || v.NodeID != nodeID {
		return false
	}
	return gen >= v.Generation || (v.AdoptGeneration != 0 && gen == v.AdoptGeneration)
}

// IncomingHere reports whether the VM is being live-migrated to nodeID: its
// domain there is expected and belongs to the migration in flight.
func (v *VM) IncomingHere(nodeID string) bool {
	return v.Migration != nil && v.Migration.To == nodeID
}

// Where a live-migrated VM runs, as one host's report proves it
// ((*VM).MigrationSettledBy).
const (
	MigrationArrived = "arrived" // the destination runs the migrating domain: the hand-over happened
	MigrationStayed  = "stayed"  // the source still runs it, no migration in progress: it did not
	// MigrationSourceAbsent: the source no longer runs it (no migration in
	// progress): half of the proof that it runs nowhere.
	MigrationSourceAbsent = "source-absent"
	// MigrationNowhere: after the source's absence, the destination does
	// not run it either: it runs on neither end (and only those two could
	// run it), so it may be started again.
	MigrationNowhere = "nowhere"
)

// MigrationSettledBy is the rule that decides whether node nodeID's report
// o of a VM with a migration record (in flight or of unknown outcome) is
// evidence of where it runs (uniqueness rule 8). desiredIndex is the
// desired-state index the reporting agent had applied.
//
//   - MigrationArrived: the destination lists the domain running at the
//     migration's generation, not paused for the migration. libvirt
//     resumes a migrated domain on the destination only once the
//     hand-over is done ("running (migrated)"), so the source no longer
//     runs it; until then the incoming domain is paused ("migration",
//     "starting-up", "postcopy...").
//
//   - MigrationStayed: the outcome is unknown and the source lists the
//     domain running at the migration's generation, with no migration of
//     it in progress, in a heartbeat sent after its agent applied the
//     desired state that holds the VM (no order to migrate any more).
//
//   - MigrationSourceAbsent, then MigrationNowhere: the outcome is unknown,
//     the source lists the domain not running (absent, or shut off) with
//     no migration in progress after it applied the hold, and later the
//     destination lists it not running either, in a heartbeat sent after
//     its agent applied a desired state at least as new as the source's
//     report (so its listing was taken after the source's). A migration
//     keeps a domain on at least one end while it runs and no new one
//     starts while the VM is held, so the VM runs on neither. o is then
//     the absence: State stopped (Reason "undefined" when not listed).
//
// Anything else is "" (no evidence: one absence alone proves nothing).
func (v *VM) MigrationSettledBy(nodeID string, o VMObservation, desiredIndex uint64) string {
	m := v.Migration
	if m == nil || o.Generation != m.Generation || v.Generation != m.Generation {
		return ""
	}
	if o.State != StateRunning {
		switch {
		case m.Outcome != MigrationOutcomeUnknown:
		case nodeID == m.From && m.SourceAbsentIndex == 0 && !o.Migrating && desiredIndex >= m.UnknownIndex:
			return MigrationSourceAbsent
		case nodeID == m.To && m.SourceAbsentIndex != 0 && desiredIndex >= m.SourceAbsentIndex:
			return MigrationNowhere
		}
		return ""
	}
	switch {
	case nodeID == m.To && !pausedForMigration(o.Reason):
		return MigrationArrived
	case nodeID == m.From && m.Outcome == MigrationOutcomeUnknown && !o.Migrating && desiredIndex >= m.UnknownIndex:
		return MigrationStayed
	}
	return ""
}

// pausedForMigration reports whether a libvirt state reason of a domain
// listed as running is one a domain has while a migration is not finished.
func pausedForMigration(reason string) bool {
	switch reason {
	case "migration", "starting-up", "postcopy", "postcopy-failed":
		return true
	}
	return false
}

// AdoptedBy reports whether a node's claim to have adopted the VM's domain
// of generation gen (after a node-local migration) is already reflected in
// the placement: the VM is placed on nodeID and gen is its adopted or its
// current generation. Such a claim has nothing left to change.
func (v *VM) AdoptedBy(nodeID string, gen uint64) bool {
	return v.NodeID == nodeID && (v.AdoptGeneration == gen || v.Generation == gen)
}

// ShortID is the first eight characters of an id, as messages and derived
// task ids show it.
func ShortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// Isolation responses of a node's agent (`chime agent --isolation-response`).
const (
	// IsolationKeep keeps the VMs running while no server is heard (the
	// seed's behaviour): only a drain acknowledgement or a fence makes a
	// rebuild elsewhere safe.
	IsolationKeep = "keep"
	// IsolationStop stops every VM once no heartbeat was acknowledged for
	// the lease, and starts none until one is.
	IsolationStop = "stop"
)

// Bounds of an isolation lease.
const (
	MinIsolationLease = time.Second
	MaxIsolationLease = 10 * time.Minute
)

// ValidIsolationResponse reports whether r is a known isolation response
// ("" is keep).
func ValidIsolationResponse(r string) bool {
	return r == "" || r == IsolationKeep || r == IsolationStop
}

// The servers' safety margin over an isolation lease (`chime server
// --isolation-lease-margin`): they treat a node with isolation response
// stop as fenced once LeaseDeadline(lease, margin) has passed since its
// last heartbeat they received. The margin covers the time the agent needs
// to stop its VMs once its lease ran out: a node's agent registers its
// bound on that time (IsolationStopBound), and the servers count the lease
// only while that bound is at most their margin (LeaseCounts).
const (
	DefaultLeaseMargin = 10 * time.Second
	MinLeaseMargin     = 500 * time.Millisecond
	MaxLeaseMargin     = 10 * time.Minute
	// DefaultStopBound is an agent's bound on the time it needs to stop
	// every VM once its lease ran out (`chime agent
	// --isolation-stop-bound`), and the bound assumed for agents that
	// predate the field: the default margin.
	DefaultStopBound = DefaultLeaseMargin
	// MinStopBound is the smallest stop bound an agent accepts: its lease
	// check runs every bound/4, at least every 100 ms.
	MinStopBound = 400 * time.Millisecond
)

// LeaseDeadline is the servers' side of an isolation lease: lease × 1.5 +
// margin (the half lease for rate drift between the two clocks, the margin
// for the time the agent needs to stop its VMs). The agent's own deadline
// (lease, counted from the earlier sending of the heartbeat) plus its stop
// bound always comes first (docs/ha.md, "The deadline order").
func LeaseDeadline(lease, margin time.Duration) time.Duration {
	return lease + lease/2 + margin
}

// StopBound is the stop bound a node's agent registered (DefaultStopBound
// from agents that predate it).
func (n Node) StopBound() time.Duration {
	if n.IsolationStopBound <= 0 {
		return DefaultStopBound
	}
	return n.IsolationStopBound
}

// LeaseCounts reports whether servers with this margin may count node n's
// isolation lease as evidence: its agent's stop bound fits in the margin.
func (n Node) LeaseCounts(margin time.Duration) bool {
	return n.IsolationResponse == IsolationStop && n.IsolationLease > 0 && n.StopBound() <= margin
}

// Restart priorities of ha VMs (`chime vm create --priority`).
const (
	PriorityHigh   = "high"
	PriorityMedium = "medium"
	PriorityLow    = "low"
)

// ValidPriority reports whether p is a known restart priority ("" is medium).
func ValidPriority(p string) bool {
	return p == "" || p == PriorityHigh || p == PriorityMedium || p == PriorityLow
}

// PriorityRank orders restart priorities: lower ranks restart first.
func PriorityRank(p string) int {
	switch p {
	case PriorityHigh:
		return 0
	case PriorityLow:
		return 2
	}
	return 1
}
