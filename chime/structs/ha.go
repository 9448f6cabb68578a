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
