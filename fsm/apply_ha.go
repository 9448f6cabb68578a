package fsm

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chime-ha/chime/chime/structs"
)

// SetHA changes a VM's automatic-HA settings (`chime vm modify`): nil
// fields are left as they are. The endpoint validates the priority.
type SetHA struct {
	VMID     string  `json:"vm_id"`
	HA       *bool   `json:"ha,omitempty"`
	Priority *string `json:"priority,omitempty"`
}

func (a *applier) setHA(p SetHA) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	var changes []string
	if p.HA != nil && v.Spec.HA != *p.HA {
		v.Spec.HA = *p.HA
		changes = append(changes, fmt.Sprintf("ha=%v", v.Spec.HA))
	}
	if p.Priority != nil && v.Spec.Priority != *p.Priority {
		v.Spec.Priority = *p.Priority
		changes = append(changes, "priority="+v.Spec.Priority)
	}
	if len(changes) == 0 {
		return v.ID, nil
	}
	if err := a.tx.PutVM(v); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.modified", v.NodeID, v.ID, "vm %s: %s", v.Name, strings.Join(changes, ", "))
}

// CmdHARestartFailed records a failed automatic restart attempt of a VM
// (structs.VM.HARestarts). New in this version; a log without it replays to
// VMs without retry state, which is what the leader-memory version had.
const CmdHARestartFailed CommandType = "vm.ha_restart_failed"

// HARestartFailed is attempt Count of restarting VMID away from its
// placement (NodeID, Generation) failing; GaveUp after the last one.
type HARestartFailed struct {
	VMID       string `json:"vm_id"`
	NodeID     string `json:"node_id"`
	Generation uint64 `json:"generation"`
	Count      int    `json:"count"`
	GaveUp     bool   `json:"gave_up,omitempty"`
	Error      string `json:"error,omitempty"`
	Retry      string `json:"retry,omitempty"` // the back-off, as shown in the event
}

// haRestartFailed stores the retry state, refused (a conflict) once the
// placement moved on, and records ha.restart_failed.
func (a *applier) haRestartFailed(p HARestartFailed) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if v.NodeID != p.NodeID || v.Generation != p.Generation {
		return "", structs.Conflict("generation", "vm %s: placement changed (node %s generation %d, the attempt was for node %s generation %d)",
			v.Name, orNone(v.NodeID), v.Generation, orNone(p.NodeID), p.Generation)
	}
	if p.Count < 1 {
		return "", structs.Invalid("count", "must be at least 1, got %d", p.Count)
	}
	if r := v.HARestarts; r != nil && r.Count >= p.Count {
		return v.ID, nil // a repeat: counts only grow
	}
	v.HARestarts = &structs.HARestarts{NodeID: p.NodeID, Generation: p.Generation, Count: p.Count, GaveUp: p.GaveUp,
		LastError: truncate(p.Error, 512), LastFailed: a.tx.Now()}
	if err := a.tx.PutVM(v); err != nil {
		return "", err
	}
	next := "retried in " + p.Retry
	if p.GaveUp {
		next = "given up"
	}
	return v.ID, a.ev("ha.restart_failed", v.NodeID, v.ID, "vm %s: automatic restart attempt %d away from node %s failed (%s); %s",
		v.Name, p.Count, a.nodeName(p.NodeID), truncate(p.Error, 200), next)
}

// nodeName is a node's name, or its id when it is gone.
func (a *applier) nodeName(id string) string {
	if n, err := a.tx.Node(id); err == nil && n != nil {
		return n.Name
	}
	return id
}

// truncate shortens s to at most n bytes, at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Commands of the cluster-wide automatic-HA switch (structs.HAState). They
// are new in this version; a log without them replays to the zero switch
// (armed, brake released), which is what the seed did.
const (
	// CmdSetHAArmed is an operator's `chime operator ha arm|disarm`.
	CmdSetHAArmed CommandType = "ha.set_armed"
	// CmdSetHABrake is the leader engaging or releasing the mass-failure
	// brake (chime/server/habrake).
	CmdSetHABrake CommandType = "ha.set_brake"
)

// SetHAArmed arms or disarms automatic HA cluster-wide. Arming also
// releases an engaged brake and acknowledges AckUnreachable unreachable
// nodes (the count the leader saw when it proposed the arm): the brake
// does not engage again until more nodes are unreachable.
type SetHAArmed struct {
	Armed          bool   `json:"armed"`
	Reason         string `json:"reason,omitempty"`
	AckUnreachable int    `json:"ack_unreachable,omitempty"`
}

// SetHABrake engages (Engaged) or releases the mass-failure brake. The
// leader decides (habrake.Next) and carries the counts it decided on, so
// that the record and the event say why.
type SetHABrake struct {
	Engaged     bool `json:"engaged"`
	Unreachable int  `json:"unreachable"`
	Nodes       int  `json:"nodes"`
	// ResetAck clears the operator's acknowledgement (the unreachable
	// share dropped to the release level).
	ResetAck bool `json:"reset_ack,omitempty"`
}

func (a *applier) setHAArmed(p SetHAArmed) (string, error) {
	s, err := a.tx.HA()
	if err != nil {
		return "", err
	}
	if !p.Armed {
		if s.Disarmed {
			return "", nil // idempotent: keeps the first reason and time
		}
		s.Disarmed, s.DisarmReason, s.DisarmedAt = true, p.Reason, a.tx.Now()
		if err := a.tx.PutHA(s); err != nil {
			return "", err
		}
		return "", a.ev("ha.disarmed", "", "", "automatic HA disarmed by an operator: %s", orNone(p.Reason))
	}
	wasBrake, wasDisarmed := s.Brake, s.Disarmed
	s.Disarmed, s.DisarmReason, s.DisarmedAt = false, "", time.Time{}
	s.AckUnreachable = p.AckUnreachable
	if s.Brake {
		s.Brake, s.BrakeReleasedAt, s.BrakeReleaseCause = false, a.tx.Now(), "operator arm"
	}
	if err := a.tx.PutHA(s); err != nil {
		return "", err
	}
	if !wasBrake && !wasDisarmed {
		return "", nil
	}
	msg := "automatic HA armed by an operator"
	if wasBrake {
		msg += "; mass-failure brake released"
	}
	if p.AckUnreachable > 0 {
		msg += "; " + plural(p.AckUnreachable, "unreachable node") + " acknowledged"
	}
	if p.Reason != "" {
		msg += ": " + p.Reason
	}
	return "", a.ev("ha.armed", "", "", "%s", msg)
}

func (a *applier) setHABrake(p SetHABrake) (string, error) {
	s, err := a.tx.HA()
	if err != nil {
		return "", err
	}
	changed := false
	if p.ResetAck && s.AckUnreachable != 0 {
		s.AckUnreachable, changed = 0, true
	}
	switch {
	case p.Engaged && !s.Brake:
		s.Brake, s.BrakeSince, s.BrakeUnreachable, s.BrakeNodes = true, a.tx.Now(), p.Unreachable, p.Nodes
		s.BrakeReleasedAt, s.BrakeReleaseCause = time.Time{}, ""
		if err := a.tx.PutHA(s); err != nil {
			return "", err
		}
		return "", a.ev("ha.brake_engaged", "", "", "mass-failure brake engaged: %d of %d nodes unreachable; automatic HA paused",
			p.Unreachable, p.Nodes)
	case !p.Engaged && s.Brake:
		s.Brake, s.BrakeReleasedAt, s.BrakeReleaseCause = false, a.tx.Now(), "nodes returned"
		if err := a.tx.PutHA(s); err != nil {
			return "", err
		}
		return "", a.ev("ha.brake_released", "", "", "mass-failure brake released: %d of %d nodes unreachable; automatic HA resumes",
			p.Unreachable, p.Nodes)
	}
	if changed {
		return "", a.tx.PutHA(s)
	}
	return "", nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
