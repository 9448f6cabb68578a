package fsm

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// Apply functions of node commands. Input was validated by the endpoint
// that built the command; here only the state is checked.

func (a *applier) registerNode(p RegisterNode) (string, error) {
	in := p.Node
	if owner := a.tx.NodeNameOwner(in.Name); owner != "" && owner != in.ID {
		return "", structs.Conflict("name", "node name %q is already used by node %s", in.Name, owner)
	}
	n, err := a.tx.Node(in.ID)
	if err != nil {
		return "", err
	}
	exists := n != nil
	replaced := false
	if exists && p.ReplaceSecret {
		switch {
		case p.ByIdentity:
			if n.Binding == nil || in.Binding == nil {
				return "", structs.Forbidden("node %s: not bound to a host identity; its secret is replaced only after `chime node reset-secret %s`", n.Name, n.Name)
			}
			if d := n.Binding.Differs(*in.Binding); len(d) > 0 {
				return "", structs.Forbidden("node %s: another host identity (%s)", n.Name, strings.Join(d, "; "))
			}
		case !n.SecretReset:
			return "", structs.Forbidden("node %s: its secret was not reset (chime node reset-secret %s)", n.Name, n.Name)
		}
		if err := a.tx.PutNodeSecretHash(in.ID, p.SecretHash); err != nil {
			return "", err
		}
		n.SecretReset, n.IdentityConflict, n.IdentityConflictAt = false, "", time.Time{}
		replaced = true
	}
	if !exists {
		n = &structs.Node{ID: in.ID, CreateIndex: a.tx.Index(), ManagementState: structs.NodeEnabled,
			MonitorState: structs.MonitorNormal, StateSince: a.tx.Now()}
		if err := a.tx.PutNodeSecretHash(in.ID, p.SecretHash); err != nil {
			return "", err
		}
	}
	if in.Binding != nil { // nil in entries of older versions
		b := *in.Binding
		n.Binding = &b
	}
	previous := n.Name
	n.Name, n.APIAddr, n.GossipAddr = in.Name, in.APIAddr, in.GossipAddr
	n.MigrationURI, n.MigrationAddr, n.BusinessInterface = in.MigrationURI, in.MigrationAddr, in.BusinessInterface
	n.VCPUs, n.MemoryMiB, n.Labels, n.AgentVersion = in.VCPUs, in.MemoryMiB, in.Labels, in.AgentVersion
	// Zero in entries written before the isolation lease existed.
	n.IsolationResponse, n.IsolationLease, n.Watchdog = in.IsolationResponse, in.IsolationLease, in.Watchdog
	n.IsolationStopBound = in.IsolationStopBound
	if err := a.tx.PutNodeName(n.ID, n.Name, previous); err != nil {
		return "", err
	}
	if err := a.tx.PutNode(n); err != nil {
		return "", err
	}
	if err := a.tx.TouchNode(n.ID); err != nil {
		return "", err
	}
	if replaced && p.ByIdentity {
		return n.ID, a.ev("node.secret_replaced", n.ID, "", "node %s re-registered with a new secret: its agent presented the join credential and the host identity the node is bound to (host uuid %s, address %s); agent at %s",
			n.Name, n.Binding.HostUUID, n.Binding.Address, n.APIAddr)
	}
	if replaced {
		return n.ID, a.ev("node.secret_replaced", n.ID, "", "node %s re-registered with a new secret (its secret was reset); agent at %s", n.Name, n.APIAddr)
	}
	if exists {
		return n.ID, a.ev("node.reregistered", n.ID, "", "node %s re-registered", n.Name)
	}
	return n.ID, a.ev("node.registered", n.ID, "", "node %s registered (%d vCPUs, %d MiB)", n.Name, n.VCPUs, n.MemoryMiB)
}

func (a *applier) resetSecret(p ResetSecret) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	if n.SecretReset {
		return n.ID, nil
	}
	n.SecretReset = true
	if err := a.tx.PutNode(n); err != nil {
		return "", err
	}
	return n.ID, a.ev("node.secret_reset", n.ID, "", "node %s: secret reset by an operator; the next agent to register as the node sets a new one", n.Name)
}

func (a *applier) nodeIdentity(p NodeIdentity) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	switch p.Kind {
	case IdentityConflict:
		n.IdentityConflict, n.IdentityConflictAt = p.Detail, a.tx.Now()
		if err := a.tx.PutNode(n); err != nil {
			return "", err
		}
		return n.ID, a.ev("node.identity_conflict", n.ID, "", "node %s: another agent claims the node: %s", n.Name, p.Detail)
	case IdentityRefused:
		return n.ID, a.ev("node.registration_refused", n.ID, "", "node %s: registration without the node's secret refused: %s", n.Name, p.Detail)
	}
	return "", structs.Invalid("kind", "unknown node identity kind %q", p.Kind)
}

// nodeUnchanged is the compare-and-set of uniqueness rule 11 on a node's
// modify index: a decision taken on the node as it was at index want is
// refused once the node changed.
func (a *applier) nodeUnchanged(nodeID string, want uint64) error {
	if nodeID == "" {
		return structs.Conflict("node_modify_index", "the vm is no longer placed on a node: decide again")
	}
	n, err := a.node(nodeID)
	if err != nil {
		return err
	}
	if n.ModifyIndex != want {
		return structs.Conflict("node_modify_index", "node %s changed since the decision was taken (modify index %d, expected %d; "+
			"management %s, drain acknowledged %v, local drain %v, fenced %v): decide again",
			n.Name, n.ModifyIndex, want, n.ManagementState, n.DrainAcked, n.LocalDrained, n.Fenced)
	}
	return nil
}

func (a *applier) setManagement(p SetManagement) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	if p.IfModifyIndex != 0 {
		if err := a.nodeUnchanged(n.ID, p.IfModifyIndex); err != nil {
			return "", err
		}
	}
	if n.ManagementState == p.State {
		if p.State == structs.NodeEnabled && p.ReleaseDrainID != "" && p.ReleaseDrainID == n.LocalDrainID && n.ReleasedDrainID != p.ReleaseDrainID {
			// node enable on an enabled node: a local drain changes no
			// management state, so releasing it is the whole change.
			n.ReleasedDrainID = p.ReleaseDrainID
			if err := a.tx.PutNode(n); err != nil {
				return "", err
			}
			if err := a.tx.TouchNode(n.ID); err != nil {
				return "", err
			}
			return n.ID, a.ev("node.drain_released", n.ID, "", "node %s: local drain %s released", n.Name, p.ReleaseDrainID)
		}
		return n.ID, nil
	}
	old := n.ManagementState
	n.ManagementState = p.State
	if p.State == structs.NodeDrained {
		// Only a heartbeat sent after the agent applied a desired state at
		// least this new can acknowledge the drain (uniqueness rule 6).
		n.DrainAcked, n.DrainIndex = false, a.tx.Index()
	}
	if p.State == structs.NodeEnabled {
		n.DrainAcked, n.Fenced = false, false
		// Enabling releases the agent's local drain, if any (the agent
		// clears its flag when it sees this id).
		if n.LocalDrainID != "" {
			n.ReleasedDrainID = n.LocalDrainID
		}
	}
	if err := a.tx.PutNode(n); err != nil {
		return "", err
	}
	if err := a.tx.TouchNode(n.ID); err != nil {
		return "", err
	}
	return n.ID, a.ev("node."+p.State, n.ID, "", "node %s: management state %s → %s", n.Name, old, p.State)
}

func (a *applier) setMonitor(p SetMonitor) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	a.lastHeartbeat = p.LastHeartbeat
	event, changed := monitorTransition(n, MonitorTransition{State: p.State, Faults: p.Faults, Reason: p.Reason}, a.tx.Now())
	if !changed {
		return n.ID, nil
	}
	if err := a.tx.PutNode(n); err != nil {
		return "", err
	}
	return n.ID, a.tx.AppendEvent(event)
}

// monitorTransition sets a node's monitor state and faults (sorted); it
// returns the event to record, and false when nothing changed.
func monitorTransition(n *structs.Node, t MonitorTransition, now time.Time) (structs.Event, bool) {
	faults := append([]string(nil), t.Faults...)
	sort.Strings(faults)
	if n.MonitorState == t.State && slices.Equal(n.Faults, faults) {
		return structs.Event{}, false
	}
	old := n.MonitorState
	n.MonitorState, n.Faults = t.State, faults
	if old != t.State {
		n.StateSince = now
	}
	msg := fmt.Sprintf("node %s: %s → %s", n.Name, old, t.State)
	if len(faults) > 0 {
		msg += fmt.Sprintf(" (faults: %v)", faults)
	}
	if t.Reason != "" {
		msg += ": " + t.Reason
	}
	return structs.Event{Kind: "node." + t.State, NodeID: n.ID, Message: msg}, true
}

func (a *applier) setNodeFlags(p SetNodeFlags) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	if p.IfModifyIndex != 0 {
		if err := a.nodeUnchanged(n.ID, p.IfModifyIndex); err != nil {
			return "", err
		}
	}
	changes := p.applyTo(n)
	if p.FencedBy != "" {
		n.Fenced, n.FencedAt = true, a.tx.Now()
		changes = append(changes, "fenced by "+p.FencedBy)
	}
	var monitor *structs.Event
	if p.FenceUnreachable && n.Fenced && n.MonitorState != structs.MonitorUnreachable {
		e, _ := monitorTransition(n, MonitorTransition{State: structs.MonitorUnreachable,
			Reason: "fenced: it returns only through a heartbeat that passes the return gate"}, a.tx.Now())
		monitor = &e
	}
	if len(changes) == 0 && monitor == nil {
		return n.ID, nil
	}
	if err := a.tx.PutNode(n); err != nil {
		return "", err
	}
	if len(changes) > 0 {
		if err := a.ev("node.flags", n.ID, "", "node %s: %v", n.Name, changes); err != nil {
			return "", err
		}
	}
	if monitor != nil {
		return n.ID, a.tx.AppendEvent(*monitor)
	}
	return n.ID, nil
}

// applyTo sets on n the flags that are given and differ, and describes
// each change (for the node.flags event).
func (p SetNodeFlags) applyTo(n *structs.Node) []string {
	var changes []string
	if p.LocalDrained != nil && n.LocalDrained != *p.LocalDrained {
		n.LocalDrained = *p.LocalDrained
		changes = append(changes, fmt.Sprintf("local_drained=%v", n.LocalDrained))
	}
	if p.DrainAcked != nil && n.DrainAcked != *p.DrainAcked {
		n.DrainAcked = *p.DrainAcked
		changes = append(changes, fmt.Sprintf("drain_acked=%v", n.DrainAcked))
	}
	if p.Fenced != nil && n.Fenced != *p.Fenced {
		n.Fenced = *p.Fenced
		changes = append(changes, fmt.Sprintf("fenced=%v", n.Fenced))
	}
	if p.LocalDrainID != nil && n.LocalDrainID != *p.LocalDrainID {
		n.LocalDrainID = *p.LocalDrainID
		changes = append(changes, fmt.Sprintf("local_drain_id=%q", n.LocalDrainID))
	}
	return changes
}

func (a *applier) removeNode(p RemoveNode) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	if a.tx.HasVMsOnNode(n.ID) {
		return "", structs.Conflict("node_id", "node %s still has VMs placed on it: drain and rebuild, or migrate them first", n.Name)
	}
	if err := a.tx.DeleteNode(n); err != nil {
		return "", err
	}
	return n.ID, a.ev("node.removed", n.ID, "", "node %s removed", n.Name)
}
