// Copyright chime authors
// SPDX-License-Identifier: MPL-2.0

// This file is chime's addition to memberlist v0.7.0; every other file of
// this module is upstream's, unchanged (see CHIME.md).
//
// Why: memberlist keeps each node's state (alive, suspect, dead, left) in the
// unexported nodeState.State. The exported Node.State it hands to callers is
// never set, no event fires when a node becomes suspect, and NotifyLeave is
// called for both a death and a departure. Reading the *Node pointers that
// Members returns races with memberlist's in-place updates
// (hashicorp/memberlist#250, #306). chime's node monitor needs suspect to
// count as not reachable and its operators want left told from dead, so
// these accessors copy the states out under nodeLock.

package memberlist

// NodeStates returns the current state of every node in this member's node
// map, this member included, keyed by node name. Dead and left nodes stay
// in the map until memberlist reaps them (GossipToTheDeadTime). It takes
// the node lock: never call it from an EventDelegate callback (use
// NodeStateLocked there).
func (m *Memberlist) NodeStates() map[string]NodeStateType {
	m.nodeLock.RLock()
	defer m.nodeLock.RUnlock()
	out := make(map[string]NodeStateType, len(m.nodeMap))
	for name, ns := range m.nodeMap {
		out[name] = ns.State
	}
	return out
}

// NodeState returns the current state of one node and whether this member
// knows it. It takes the node lock: never call it from an EventDelegate
// callback (use NodeStateLocked there).
func (m *Memberlist) NodeState(name string) (NodeStateType, bool) {
	m.nodeLock.RLock()
	defer m.nodeLock.RUnlock()
	return m.NodeStateLocked(name)
}

// NodeStateLocked is NodeState for EventDelegate callbacks only: memberlist
// calls NotifyJoin, NotifyUpdate and NotifyLeave with the node lock held,
// so taking it again would deadlock. In NotifyLeave it tells a departure
// (StateLeft) from a death (StateDead). Called anywhere else it races with
// memberlist's updates.
func (m *Memberlist) NodeStateLocked(name string) (NodeStateType, bool) {
	ns, ok := m.nodeMap[name]
	if !ok {
		return 0, false
	}
	return ns.State, true
}
