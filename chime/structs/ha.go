package structs

import "time"

// HAState is the cluster-wide switch of automatic HA, replicated in the
// FSM (one record): the operator's arm/disarm and the latch of the
// mass-failure brake. The zero value is armed with the brake released,
// which is what a cluster whose log predates these commands has.
type HAState struct {
	// Disarmed: an operator paused automatic HA cluster-wide
	// (`chime operator ha disarm`, planned maintenance). Only an operator's
	// arm ends it.
	Disarmed     bool      `json:"disarmed"`
	DisarmReason string    `json:"disarm_reason,omitempty"` // the operator's words
	DisarmedAt   time.Time `json:"disarmed_at,omitzero"`    // leader's clock, carried in the command

	// Brake is the latch of the mass-failure brake: the leader engaged it
	// because more than the configured share of nodes were unreachable at
	// once. It releases by itself once the unreachable share has dropped
	// to half the configured share or less, or by an operator's arm.
	Brake             bool      `json:"brake"`
	BrakeSince        time.Time `json:"brake_since,omitzero"`
	BrakeUnreachable  int       `json:"brake_unreachable,omitempty"` // unreachable nodes when it engaged
	BrakeNodes        int       `json:"brake_nodes,omitempty"`       // nodes counted when it engaged
	BrakeReleasedAt   time.Time `json:"brake_released_at,omitzero"`
	BrakeReleaseCause string    `json:"brake_release_cause,omitempty"` // "nodes returned" or "operator arm"

	// AckUnreachable is how many unreachable nodes the operator's last arm
	// acknowledged: the brake does not engage again until more nodes than
	// this (and more than the configured share) are unreachable. It is
	// reset when the unreachable share drops back to the release level.
	AckUnreachable int `json:"ack_unreachable,omitempty"`

	ModifyIndex uint64 `json:"modify_index,omitempty"`
}

// NodeReserve is one node's share of the HA reservation.
type NodeReserve struct {
	NodeID string `json:"node_id"`
	Name   string `json:"name"`
	// Receiver: the node may take restarted VMs (enabled and normal).
	Receiver bool `json:"receiver"`
	// Capacity (vCPUs overcommitted, rounded down) and what the VMs
	// placed on it take now.
	VCPUs         int64 `json:"vcpus"`
	MemoryMiB     int64 `json:"memory_mib"`
	UsedVCPUs     int64 `json:"used_vcpus"`
	UsedMemoryMiB int64 `json:"used_memory_mib"`
	// HAVCPUs and HAMemoryMiB are what its protected VMs take: what the
	// other nodes must absorb when it fails.
	HAVCPUs     int64 `json:"ha_vcpus"`
	HAMemoryMiB int64 `json:"ha_memory_mib"`
	// ReservedVCPUs and ReservedMemoryMiB are the most any failure set
	// tried would place on it: free capacity it keeps for failover.
	ReservedVCPUs     int64 `json:"reserved_vcpus"`
	ReservedMemoryMiB int64 `json:"reserved_memory_mib"`
	// SpareVCPUs and SpareMemoryMiB are free capacity beyond the
	// reservation: what new VMs may take without breaking it (0 for a
	// node that is not a receiver).
	SpareVCPUs     int64 `json:"spare_vcpus"`
	SpareMemoryMiB int64 `json:"spare_memory_mib"`
}

// HAReservation is the answer of scheduler.Reserve: can every protected VM be
// restarted after the loss of any Tolerate nodes?
type HAReservation struct {
	Tolerate int    `json:"tolerate"`
	OK       bool   `json:"ok"`
	Rule     string `json:"rule"`
	// Reason says why it holds or not, for people.
	Reason string `json:"reason"`
	// ProtectedVMs counts the protected VMs.
	ProtectedVMs int `json:"protected_vms"`
	// Failed are the nodes already unreachable: their protected VMs are
	// counted as needing a restart in every failure set.
	Failed []string `json:"failed,omitempty"`
	// WorstCase is the failure set that breaks the reservation (the first
	// in trial order with the most VMs left without a node), or, when it
	// holds, the one that leaves the least memory free.
	WorstCase []string `json:"worst_case,omitempty"`
	// Unplaced are the protected VMs the worst case leaves without a node.
	Unplaced []string `json:"unplaced,omitempty"`
	// SetsTried and Exhaustive: how many failure sets were placed, and
	// whether that was every set of Tolerate nodes.
	SetsTried  int  `json:"sets_tried"`
	Exhaustive bool `json:"exhaustive"`
	// Nodes is every node's share, in name order.
	Nodes []NodeReserve `json:"nodes"`
}

// FailoverEntry is where one protected VM would be restarted if its node
// failed now.
type FailoverEntry struct {
	VMID     string `json:"vm_id"`
	VMName   string `json:"vm_name"`
	NodeID   string `json:"node_id"`
	NodeName string `json:"node_name,omitempty"`
	// Target is the node the scheduler picks ("" when none fits).
	Target     string `json:"target,omitempty"`
	TargetName string `json:"target_name,omitempty"`
	// Safe: a target exists and the HA reservation holds, so the restart
	// would also survive the other failures admission control promises.
	Safe   bool   `json:"safe"`
	Reason string `json:"reason"`
}
