package api

import (
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// CreateVMRequest is the body of POST /v1/vms.
type CreateVMRequest struct {
	Name    string            `json:"name"`
	VCPUs   int               `json:"vcpus"`
	Memory  int               `json:"memory_mib"`
	Disks   []string          `json:"disks,omitempty"`
	HA      bool              `json:"ha,omitempty"`
	Stopped bool              `json:"stopped,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Group   string            `json:"anti_affinity,omitempty"`
	// Priority is the restart priority of an ha VM: high, medium or low
	// ("" is medium).
	Priority string `json:"priority,omitempty"`
}

// RegisterRequest is the body of POST /v1/agent/register. The agent
// generates its node id once and persists it, so a re-registration after a
// restart keeps the node's identity. Secret is the agent's previous secret
// when it re-registers an existing id.
type RegisterRequest struct {
	ID                string            `json:"id"`
	Name              string            `json:"name"`
	Secret            string            `json:"secret,omitempty"`
	APIAddr           string            `json:"api_addr"`
	GossipAddr        string            `json:"gossip_addr"`
	MigrationURI      string            `json:"migration_uri"`
	MigrationAddr     string            `json:"migration_addr"`
	BusinessInterface string            `json:"business_interface"`
	VCPUs             int               `json:"vcpus"`
	MemoryMiB         int               `json:"memory_mib"`
	Labels            map[string]string `json:"labels,omitempty"`
	AgentVersion      string            `json:"agent_version"`
	// IsolationResponse is stop or keep ("" from older agents: keep);
	// IsolationLease is the agent's lease (a duration: no timestamp
	// crosses the wire); Watchdog says a watchdog device is armed.
	IsolationResponse string        `json:"isolation_response,omitempty"`
	IsolationLease    time.Duration `json:"isolation_lease,omitempty"`
	Watchdog          bool          `json:"watchdog,omitempty"`
	// IsolationStopBound is the agent's bound on the time it needs to stop
	// every VM once its lease ran out (a duration; 0 from older agents).
	IsolationStopBound time.Duration `json:"isolation_stop_bound,omitempty"`
	// HostUUID is libvirt's host UUID the node id was derived from, and
	// MachineID the host's /etc/machine-id ("" when unreadable, and from
	// older agents): facts of the host identity the servers bind the node
	// to (docs/security.md, "Node identity").
	HostUUID  string `json:"host_uuid,omitempty"`
	MachineID string `json:"machine_id,omitempty"`
}

// RegisterResponse carries the node secret the agent must present from now on.
type RegisterResponse struct {
	NodeID string `json:"node_id"`
	Secret string `json:"secret"`
	Timing Timing `json:"timing"`
	// GossipAddrs are the servers' memberlist addresses (host:port) agents join through.
	GossipAddrs []string `json:"gossip_addrs,omitempty"`
}

// PingResponse is an agent's answer to the servers' ping-back, GET
// /v1/ping on its API: who answers. The servers count the ping-back as
// failed when the answer names another node, or says the agent is not
// registered (uniqueness rule 10: an agent that lost its data dir answers
// at the node's address but holds no credentials the servers accept).
type PingResponse struct {
	NodeID string `json:"node_id"`
	Name   string `json:"name"`
	// Registered says whether the servers accepted this process's
	// registration (and have not refused its credentials since). nil: an
	// agent older than this field, which does not say.
	Registered *bool `json:"registered,omitempty"`
}

// Timing is set on the servers and pushed to agents.
type Timing struct {
	HeartbeatInterval time.Duration `json:"heartbeat_interval"`
	MissedHeartbeats  int           `json:"missed_heartbeats"`
	// LeaseMargin is the servers' margin over an isolation lease
	// (--isolation-lease-margin; a duration, never a timestamp; 0 from
	// older servers, which use structs.DefaultLeaseMargin).
	LeaseMargin time.Duration `json:"lease_margin,omitempty"`
}

// HeartbeatRequest is the body of POST /v1/agent/heartbeat. Headers carry
// X-Chime-Node and X-Chime-Secret.
type HeartbeatRequest struct {
	NodeID       string                  `json:"node_id"`
	Faults       []string                `json:"faults,omitempty"`
	VMs          []structs.VMObservation `json:"vms"`
	LocalDrained bool                    `json:"local_drained"`
	LocalDrainID string                  `json:"local_drain_id,omitempty"` // id of the local drain, released by node enable
	// LocalDrainState is draining while a local drain waits for VMs to
	// stop, drained once none runs (LocalDrained is then true too).
	LocalDrainState string `json:"local_drain_state,omitempty"`
	// DesiredIndex is the index of the last desired state the agent
	// accepted and applies: a drain ack counts only from a heartbeat whose
	// desired index is at least the drain's.
	DesiredIndex uint64 `json:"desired_index"`
	// VMsUnknown is set when libvirt could not be listed: VMs is then
	// empty and says nothing about which VMs run.
	VMsUnknown bool                     `json:"vms_unknown,omitempty"`
	Adopted    []structs.VMObservation  `json:"adopted,omitempty"`    // domains that arrived by node-local migration
	Migrations []structs.LocalMigration `json:"migrations,omitempty"` // the migration log: node-local migrations sent from here
	// Announced are node-local migrations announced to this node whose
	// domain has not arrived yet: the servers hold those VMs.
	Announced []structs.AdoptionRef `json:"announced,omitempty"`
	// ExpiredAdoptions are announcements this agent dropped after their
	// bound without the domain arriving.
	ExpiredAdoptions []structs.AdoptionRef `json:"expired_adoptions,omitempty"`
	// StaleDestroyed are the running stale copies (VMs placed elsewhere or
	// at a newer generation) the agent destroyed since its last heartbeat
	// that got through: each is a uniqueness conflict the servers record.
	StaleDestroyed []structs.VMObservation `json:"stale_destroyed,omitempty"`
}

// HeartbeatResponse tells the agent the current timing.
type HeartbeatResponse struct {
	// RejectedAdoptions are VM ids the agent reported as adopted that the
	// servers refused (the placement moved on): the agent destroys them.
	RejectedAdoptions []string `json:"rejected_adoptions,omitempty"`
	// AppliedMigrations are the migration log entries (VM and generation)
	// the servers applied: the agent deletes exactly these.
	AppliedMigrations []structs.AdoptionRef `json:"applied_migrations,omitempty"`
	// DroppedAdoptions are VM ids of announced adoptions that are over
	// (or expired and released): the agent drops their records.
	DroppedAdoptions []string `json:"dropped_adoptions,omitempty"`
	Timing           Timing   `json:"timing"`
	GossipAddrs      []string `json:"gossip_addrs,omitempty"`
}

// DesiredVM is one VM an agent must run (or keep stopped).
type DesiredVM struct {
	ID           string         `json:"id"`
	Name         string         `json:"name"`
	Spec         structs.VMSpec `json:"spec"`
	DesiredState string         `json:"desired_state"`
	Generation   uint64         `json:"generation"`
	// AdoptGeneration: a domain of this VM with this older generation
	// arrived here by live migration; keep it, update its metadata.
	AdoptGeneration uint64 `json:"adopt_generation,omitempty"`
	// Migrate orders the agent (on the source node) to live-migrate the VM.
	Migrate *MigrationOrder `json:"migrate,omitempty"`
	// Held: the outcome of the VM's live migration from here is unknown
	// (uniqueness rule 8). Leave its domain as it is — start nothing,
	// stop nothing — and report what libvirt shows: the servers settle it
	// on evidence.
	Held bool `json:"held,omitempty"`
}

// MigrationOrder tells a source agent where to live-migrate a VM.
type MigrationOrder struct {
	TaskID     string `json:"task_id"`
	ToNodeID   string `json:"to_node_id"`
	DestURI    string `json:"dest_uri"`    // libvirt URI of the destination, e.g. qemu+tcp://10.0.0.2/system
	MigrateURI string `json:"migrate_uri"` // qemu migration stream, e.g. tcp://10.0.0.2
}

// IncomingVM is a VM being live-migrated to this node: its domain appears
// here before the placement moves, and must be left alone.
type IncomingVM struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Generation uint64 `json:"generation"`
}

// MigrationReport is the body of POST /v1/agent/migrated: a source agent's
// result of a MigrationOrder.
type MigrationReport struct {
	TaskID     string `json:"task_id"`
	VMID       string `json:"vm_id"`
	Generation uint64 `json:"generation"`
	OK         bool   `json:"ok"`
	// Unknown: the agent could not learn whether the hand-over happened
	// (libvirt's call failed and the domain is not here, or libvirt
	// cannot be listed): neither failed nor succeeded; the servers hold
	// the VM until a host proves where it runs.
	Unknown bool   `json:"unknown,omitempty"`
	Error   string `json:"error,omitempty"`
}

// DesiredState is the answer to GET /v1/agent/desired (a blocking query).
type DesiredState struct {
	NodeID          string       `json:"node_id"`
	ManagementState string       `json:"management_state"`
	VMs             []DesiredVM  `json:"vms"`
	Incoming        []IncomingVM `json:"incoming,omitempty"`
	// ReleasedDrainID is the local drain the operator released (`node
	// enable`): an agent whose local drain has this id clears it.
	ReleasedDrainID string `json:"released_drain_id,omitempty"`
	Index           uint64 `json:"index"`
}

// Peer is one Raft server.
type Peer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Leader  bool   `json:"leader"`
	Voter   bool   `json:"voter"`
}

// Member is one memberlist member.
type Member struct {
	Name  string            `json:"name"`
	Addr  string            `json:"addr"`
	State string            `json:"state"`
	Meta  map[string]string `json:"meta,omitempty"`
}

// Status is GET /v1/status.
type Status struct {
	Name      string `json:"name"`
	Leader    string `json:"leader"`     // raft address of the leader
	LeaderAPI string `json:"leader_api"` // API URL of the leader, if known
	IsLeader  bool   `json:"is_leader"`
	State     string `json:"raft_state"`
	Index     uint64 `json:"applied_index"`
	Healthy   bool   `json:"healthy"`
}

// ModifyVMRequest is the body of PATCH /v1/vms/{id}: the automatic-HA
// settings to change (nil: unchanged).
type ModifyVMRequest struct {
	HA       *bool   `json:"ha,omitempty"`
	Priority *string `json:"priority,omitempty"`
}

// FenceResponse is the answer of POST /v1/nodes/{id}/fence: the node as
// recorded after the fence command succeeded, and the command's output.
type FenceResponse struct {
	Node   *structs.Node `json:"node"`
	Output string        `json:"output"`
}

// CreateTokenRequest is the body of POST /v1/acl/tokens.
type CreateTokenRequest struct {
	Role        string `json:"role"`
	Description string `json:"description,omitempty"`
}

// Validate checks a token request; errors name the field.
func (r CreateTokenRequest) Validate() error {
	if err := structs.ValidateRole("role", r.Role); err != nil {
		return err
	}
	if len(r.Description) > structs.MaxTokenDescription {
		return structs.Invalid("description", "at most %d characters, got %d", structs.MaxTokenDescription, len(r.Description))
	}
	return nil
}

// TokenSecret is a token as created: the only answer that carries its
// secret (the state keeps only its hash).
type TokenSecret struct {
	structs.ACLToken
	SecretID string `json:"secret_id"`
}

// GossipKeyRequest is the body of POST /v1/operator/gossip/keyring/{op}
// (op install, use or remove).
type GossipKeyRequest struct {
	Key string `json:"key"` // base64 of 16, 24 or 32 bytes
}

// GossipKeyringChange answers a keyring change: how many alive members were
// asked (the answering server included) and which could not be told.
type GossipKeyringChange struct {
	Members int               `json:"members"`
	Errors  map[string]string `json:"errors,omitempty"`
}

// GossipKey is one key of a keyring, named by its fingerprint (the first 8
// bytes of its SHA-256, hex), never shown.
type GossipKey struct {
	Fingerprint string `json:"fingerprint"`
	Primary     bool   `json:"primary"`
}

// GossipKeyring is GET /v1/operator/gossip/keyring: the answering server's
// keyring and the number of alive gossip members.
type GossipKeyring struct {
	Server  string      `json:"server"`
	Keys    []GossipKey `json:"keys"`
	Members int         `json:"members"`
}
