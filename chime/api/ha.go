package api

import "github.com/chime-ha/chime/chime/structs"

// HAStatus is the answer of GET /v1/operator/ha and of arm/disarm: the
// cluster-wide automatic-HA switch and the HA reservation.
type HAStatus struct {
	Armed       bool                   `json:"armed"`  // automatic HA may restart VMs now
	Reason      string                 `json:"reason"` // why not, or "armed"
	Switch      structs.HAState        `json:"switch"`
	BrakeShare  float64                `json:"brake_share"` // --ha-brake-share of the leader
	Unreachable int                    `json:"unreachable"` // counted nodes unreachable now
	Counted     int                    `json:"counted"`     // nodes counted (all but drained)
	Reservation *structs.HAReservation `json:"reservation,omitempty"`
}

// HAArmRequest is the optional body of POST /v1/operator/ha/{arm,disarm}.
type HAArmRequest struct {
	Reason string `json:"reason,omitempty"`
}

// MaxHAReasonLen bounds HAArmRequest.Reason.
const MaxHAReasonLen = 256

// Validate checks the request's bounds.
func (r HAArmRequest) Validate() error {
	if len(r.Reason) > MaxHAReasonLen {
		return structs.Invalid("reason", "at most %d characters, got %d", MaxHAReasonLen, len(r.Reason))
	}
	return nil
}

// FailoverPlan is the answer of GET /v1/failover (every protected VM),
// /v1/vms/{id}/failover and /v1/nodes/{id}/failover (the entries of that
// VM or node): computed by the leader from its current state, never stored.
type FailoverPlan struct {
	Entries     []structs.FailoverEntry `json:"entries"`
	Reservation structs.HAReservation   `json:"reservation"`
}
