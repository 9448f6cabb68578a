package hapolicy

import (
	"fmt"
	"math"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// DefaultBrakeShare is --ha-brake-share's default: the brake engages when
// more than half of the counted nodes are unreachable at once.
const DefaultBrakeShare = 0.5

// ValidateShare checks a --ha-brake-share value: in (0, 1]. 1 means the
// brake never engages (more than every node cannot be unreachable).
func ValidateShare(share float64) error {
	if math.IsNaN(share) || share <= 0 || share > 1 {
		return structs.Invalid("ha_brake_share", "must be a number in (0, 1], got %v", share)
	}
	return nil
}

// Count returns how many of the counted nodes are unreachable, and how
// many are counted: every node but the drained ones (a drained node is out
// of service on purpose; its silence is no failure).
func Count(nodes []structs.Node) (unreachable, counted int) {
	for _, n := range nodes {
		if n.ManagementState == structs.NodeDrained {
			continue
		}
		counted++
		if n.MonitorState == structs.MonitorUnreachable {
			unreachable++
		}
	}
	return unreachable, counted
}

// over reports unreachable > share × counted (the engage level).
func over(unreachable, counted int, share float64) bool {
	return counted > 0 && float64(unreachable) > share*float64(counted)+1e-9
}

// released reports unreachable <= share/2 × counted (the release level:
// the hysteresis band is the lower half of the engage level).
func released(unreachable, counted int, share float64) bool {
	return float64(unreachable) <= share/2*float64(counted)+1e-9
}

// Armed is the switch the recovery duty consults before every automatic
// restart: false, with the reason, while an operator disarmed automatic
// HA, while the brake is engaged (latched in the state), and also while
// more than share of the counted nodes are unreachable but the leader has
// not recorded the brake yet (so no restart slips through between a mass
// failure and its record), unless an operator's arm acknowledged at least
// that many unreachable nodes.
func Armed(ha structs.HAState, nodes []structs.Node, share float64) (bool, string) {
	if ha.Disarmed {
		return false, "automatic HA is disarmed by an operator: " + orNone(ha.DisarmReason)
	}
	if ha.Brake {
		return false, fmt.Sprintf("the mass-failure brake is engaged since %s (%d of %d nodes were unreachable)",
			ha.BrakeSince.UTC().Format(time.RFC3339), ha.BrakeUnreachable, ha.BrakeNodes)
	}
	u, c := Count(nodes)
	if over(u, c, share) && u > ha.AckUnreachable {
		return false, fmt.Sprintf("mass failure: %d of %d nodes are unreachable (more than %s)", u, c, pct(share))
	}
	return true, "armed"
}

// Next is the brake's transition, if any, that the leader should record
// for the current state: engage when more than share of the counted nodes
// are unreachable (and more than an operator's arm acknowledged); release,
// and forget the acknowledgement, once at most half that share is.
func Next(ha structs.HAState, nodes []structs.Node, share float64) *fsm.SetHABrake {
	u, c := Count(nodes)
	switch {
	case !ha.Brake && over(u, c, share) && u > ha.AckUnreachable:
		return &fsm.SetHABrake{Engaged: true, Unreachable: u, Nodes: c}
	case ha.Brake && released(u, c, share):
		return &fsm.SetHABrake{Unreachable: u, Nodes: c, ResetAck: true}
	case !ha.Brake && ha.AckUnreachable > 0 && released(u, c, share):
		return &fsm.SetHABrake{Unreachable: u, Nodes: c, ResetAck: true}
	}
	return nil
}

// Alarms derives the HA alarms at now (the alarmer's Extra):
// HABrakeEngaged while the brake is latched, HADisarmed while an operator
// disarmed automatic HA, and HAReservationBroken while res does not hold
// (admission control on: res.Tolerate > 0).
func Alarms(ha structs.HAState, res structs.HAReservation, now time.Time) []structs.Alarm {
	var out []structs.Alarm
	if ha.Brake {
		out = append(out, structs.Alarm{Name: "HABrakeEngaged", Severity: "critical", Labels: map[string]string{"scope": "cluster"},
			Summary:     fmt.Sprintf("mass-failure brake engaged: %d of %d nodes unreachable", ha.BrakeUnreachable, ha.BrakeNodes),
			Description: "Automatic HA is paused: too many nodes went unreachable at once, which is more likely a network failure than dead hosts. Find the cause; the brake releases by itself when most nodes are back, or arm with `chime operator ha arm` once the unreachable nodes are known dead or fenced. See docs/ha.md.",
			StartsAt:    ha.BrakeSince})
	}
	if ha.Disarmed {
		out = append(out, structs.Alarm{Name: "HADisarmed", Severity: "warning", Labels: map[string]string{"scope": "cluster"},
			Summary:     "automatic HA is disarmed: " + orNone(ha.DisarmReason),
			Description: "An operator disarmed automatic HA (`chime operator ha disarm`): VMs of failed nodes are not restarted elsewhere. Arm it again with `chime operator ha arm` after the maintenance.",
			StartsAt:    ha.DisarmedAt})
	}
	if !res.OK && res.Tolerate > 0 { // --ha-tolerate-failures 0: admission control is off
		out = append(out, structs.Alarm{Name: "HAReservationBroken", Severity: "warning",
			Labels:      map[string]string{"scope": "cluster", "rule": res.Rule},
			Summary:     fmt.Sprintf("HA reservation broken: the cluster no longer survives %s", failures(res.Tolerate)),
			Description: res.Reason + ". New ha VMs are refused (409) until it holds again: add or enable nodes, or free capacity. See docs/ha.md.",
			StartsAt:    now})
	}
	return out
}

// LeaseAlarms are the HALeaseNotCounted alarms: one per node with
// isolation response stop whose agent's stop bound exceeds the servers'
// margin, so that its lease is no evidence (structs.Node.LeaseCounts).
func LeaseAlarms(nodes []structs.Node, margin time.Duration, now time.Time) []structs.Alarm {
	var out []structs.Alarm
	for _, n := range nodes {
		if n.IsolationResponse != structs.IsolationStop || n.IsolationLease <= 0 || n.LeaseCounts(margin) {
			continue
		}
		out = append(out, structs.Alarm{Name: "HALeaseNotCounted", Severity: "warning",
			Labels: map[string]string{"node": n.Name, "node_id": n.ID},
			Summary: fmt.Sprintf("node %s: its agent's isolation stop bound %s exceeds the servers' lease margin %s: its lease is not counted",
				n.Name, n.StopBound(), margin),
			Description: "Automatic HA restarts this node's ha VMs elsewhere only on a fence or a drain acknowledgement, never on its isolation lease: its agent may need longer to stop its VMs than the margin allows. Lower the agent's --isolation-stop-bound or raise the servers' --isolation-lease-margin. See docs/ha.md.",
			StartsAt:    now})
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

func failures(n int) string {
	if n == 1 {
		return "1 node failure"
	}
	return fmt.Sprintf("%d node failures", n)
}

func pct(share float64) string { return fmt.Sprintf("%g%%", share*100) }
