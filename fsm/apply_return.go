package fsm

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// The servers gate the return (uniqueness rule 9): judged when a
// node.heartbeat carrying CopyEvidence applies, against the state as it is
// then, so that every replica decides the same.

// judgeCopies records the node's uniqueness conflicts from the evidence,
// and applies the monitor transition the heartbeat asks for only as far as
// the evidence allows: an unreachable node leaves unreachable only when
// the agent had applied a desired state at least the node's (nodeIndex,
// read before this command changed anything), libvirt was listed and no
// stale copy runs; a node that runs a stale copy is never normal. It
// returns the events to record and whether n changed.
func (a *applier) judgeCopies(n *structs.Node, nodeIndex uint64, ev CopyEvidence, want *MonitorTransition) ([]structs.Event, bool, error) {
	var events []structs.Event
	changed := false
	stale, err := a.staleCopies(n, ev)
	if err != nil {
		return nil, false, err
	}
	if !SameCopies(n.StaleCopies, stale) {
		for _, s := range stale {
			if !slices.ContainsFunc(n.StaleCopies, func(o structs.StaleCopy) bool { return o.VMID == s.VMID && o.Generation == s.Generation }) {
				e, err := a.conflictEvent(n, s)
				if err != nil {
					return nil, false, err
				}
				events = append(events, e)
			}
		}
		n.StaleCopies, changed = stale, true
	}
	var running []structs.StaleCopy
	for _, s := range stale {
		if s.Running() {
			running = append(running, s)
		}
	}

	if n.MonitorState == structs.MonitorUnreachable {
		if want == nil || want.State == structs.MonitorUnreachable {
			return events, changed, nil
		}
		reason, err := a.returnRefusal(nodeIndex, ev, running)
		if err != nil {
			return nil, false, err
		}
		if reason != "" {
			if n.ReturnRefused != reason {
				n.ReturnRefused, changed = reason, true
				events = append(events, structs.Event{Kind: "node.return_refused", NodeID: n.ID,
					Message: fmt.Sprintf("node %s stays unreachable: %s", n.Name, reason)})
			}
			return events, changed, nil
		}
		if n.ReturnRefused != "" {
			n.ReturnRefused, changed = "", true
		}
	}

	base := MonitorTransition{State: n.MonitorState, Faults: n.Faults}
	if want != nil {
		base = *want
	}
	faults := slices.DeleteFunc(slices.Clone(base.Faults), func(f string) bool { return f == structs.FaultStaleCopy })
	reason := base.Reason
	if len(running) > 0 {
		faults = append(faults, structs.FaultStaleCopy)
		reason = "heartbeat lists a running copy of a VM placed elsewhere"
	}
	state := structs.MonitorNormal
	if len(faults) > 0 {
		state = structs.MonitorError
	}
	if reason == "" {
		reason = "heartbeat received"
	}
	if e, ok := monitorTransition(n, MonitorTransition{State: state, Faults: faults, Reason: reason}, a.tx.Now()); ok {
		events = append(events, e)
		changed = true
	}
	return events, changed, nil
}

// staleCopies are the evidence's copies that are stale at apply time.
func (a *applier) staleCopies(n *structs.Node, ev CopyEvidence) ([]structs.StaleCopy, error) {
	return StaleCopies(n, ev, a.tx.VM, a.tx.Now())
}

// StaleCopies is the rule that says which uniqueness conflicts node n
// has after a heartbeat with evidence ev, at now: each copy the heartbeat
// lists running or destroyed of a VM that exists and is not placed on n at
// that generation (nor adopted, nor migrating to n), and each earlier
// conflict of n that ended less than structs.ConflictHold ago; in VM id,
// generation order. A conflict keeps its Since; a running one that the
// heartbeat no longer lists, or lists destroyed, ends now. When libvirt
// was not listed the running conflicts of n stay (nothing proves them
// gone). vm returns nil for a VM that does not exist.
func StaleCopies(n *structs.Node, ev CopyEvidence, vm func(id string) (*structs.VM, error), now time.Time) ([]structs.StaleCopy, error) {
	var out []structs.StaleCopy
	find := func(list []structs.StaleCopy, id string, gen uint64) int {
		return slices.IndexFunc(list, func(o structs.StaleCopy) bool { return o.VMID == id && o.Generation == gen })
	}
	add := func(c Copy, destroyed bool) error {
		v, err := vm(c.VMID)
		if err != nil {
			return err
		}
		if v == nil || !v.StaleCopyOn(n.ID, c.Generation) || find(out, c.VMID, c.Generation) >= 0 {
			return nil // deleted, current, or listed running and destroyed (the running copy counts)
		}
		s := structs.StaleCopy{VMID: c.VMID, Generation: c.Generation, PlacedOn: v.NodeID, PlacedGeneration: v.Generation,
			Destroyed: destroyed, Since: now}
		if destroyed {
			s.Ended = now
		}
		if i := find(n.StaleCopies, c.VMID, c.Generation); i >= 0 {
			s.Since = n.StaleCopies[i].Since
			if o := n.StaleCopies[i]; destroyed && !o.Running() {
				s.Ended = o.Ended
			}
		}
		out = append(out, s)
		return nil
	}
	if !ev.Unknown {
		for _, c := range ev.Running {
			if err := add(c, false); err != nil {
				return nil, err
			}
		}
	}
	for _, c := range ev.Destroyed {
		if err := add(c, true); err != nil {
			return nil, err
		}
	}
	for _, o := range n.StaleCopies {
		if find(out, o.VMID, o.Generation) >= 0 {
			continue
		}
		switch {
		case o.Running() && ev.Unknown:
		case o.Running():
			o.Ended = now
		case now.Sub(o.Ended) >= structs.ConflictHold:
			continue
		}
		out = append(out, o)
	}
	slices.SortFunc(out, func(x, y structs.StaleCopy) int {
		return cmp.Or(cmp.Compare(x.VMID, y.VMID), cmp.Compare(x.Generation, y.Generation))
	})
	return out, nil
}

// returnRefusal says why a heartbeat does not bring an unreachable node
// back, or "" when it does.
func (a *applier) returnRefusal(nodeIndex uint64, ev CopyEvidence, running []structs.StaleCopy) (string, error) {
	var vmName, placed string
	if len(running) > 0 {
		var err error
		if vmName, placed, err = a.vmAndNodeNames(running[0].VMID, running[0].PlacedOn); err != nil {
			return "", err
		}
	}
	return ReturnRefusal(nodeIndex, ev, running, vmName, placed), nil
}

// ReturnRefusal is the rule that gates an unreachable node's return
// (uniqueness rule 9): it says why a heartbeat with evidence ev does not
// bring the node back, or "" when it does. nodeIndex is the node's
// desired-state index, running the stale copies the heartbeat lists
// running, vmName and placedOn the names of the first one's VM and
// placement node. The heartbeat monitor uses it to tell whether a
// heartbeat changes anything; the FSM decides with it.
func ReturnRefusal(nodeIndex uint64, ev CopyEvidence, running []structs.StaleCopy, vmName, placedOn string) string {
	switch {
	case ev.Unknown:
		return "libvirt could not be listed: the heartbeat proves nothing about stale copies"
	case ev.DesiredIndex < nodeIndex:
		return fmt.Sprintf("the agent had applied desired state %d, older than the node's %d", ev.DesiredIndex, nodeIndex)
	case len(running) > 0:
		s := running[0]
		msg := fmt.Sprintf("it runs a copy of vm %s (generation %d) placed on %s generation %d", vmName, s.Generation, placedOn, s.PlacedGeneration)
		if len(running) > 1 {
			msg += fmt.Sprintf(" and %d more stale copies", len(running)-1)
		}
		return msg
	}
	return ""
}

// SameCopies compares two lists of stale copies, their times aside.
func SameCopies(x, y []structs.StaleCopy) bool {
	return slices.EqualFunc(x, y, func(a, b structs.StaleCopy) bool {
		return a.VMID == b.VMID && a.Generation == b.Generation && a.PlacedOn == b.PlacedOn &&
			a.PlacedGeneration == b.PlacedGeneration && a.Destroyed == b.Destroyed && a.Running() == b.Running()
	})
}

// conflictEvent is the vm.uniqueness_conflict event of a new conflict.
func (a *applier) conflictEvent(n *structs.Node, s structs.StaleCopy) (structs.Event, error) {
	name, placed, err := a.vmAndNodeNames(s.VMID, s.PlacedOn)
	if err != nil {
		return structs.Event{}, err
	}
	what := fmt.Sprintf("runs on node %s", n.Name)
	if !s.Running() {
		what = fmt.Sprintf("ran on node %s", n.Name)
	}
	if s.Destroyed {
		what = fmt.Sprintf("ran on node %s until its agent destroyed it", n.Name)
	}
	return structs.Event{Kind: "vm.uniqueness_conflict", NodeID: n.ID, VMID: s.VMID,
		Message: fmt.Sprintf("uniqueness conflict: a copy of vm %s (generation %d) %s, while it is placed on %s generation %d",
			name, s.Generation, what, placed, s.PlacedGeneration)}, nil
}

// vmAndNodeNames are the names of a VM and a node for messages (the id
// when the record is gone, "none" for no node).
func (a *applier) vmAndNodeNames(vmID, nodeID string) (string, string, error) {
	name := vmID
	if v, err := a.tx.VM(vmID); err != nil {
		return "", "", err
	} else if v != nil {
		name = v.Name
	}
	node := orNone(nodeID)
	if nodeID != "" {
		if pn, err := a.tx.Node(nodeID); err != nil {
			return "", "", err
		} else if pn != nil {
			node = pn.Name
		}
	}
	return name, node, nil
}
