package alarms

import (
	"fmt"
	"sort"

	"github.com/chime-ha/chime/chime/structs"
)

// Event kinds DeriveGaveUp reads (recorded by chime/server/recovery).
const (
	eventHARestarted   = "ha.restarted"
	eventHAGaveUp      = "ha.gave_up"
	eventFenceOK       = "fence.succeeded"
	eventFenceGaveUp   = "fence.gave_up"
	haGaveUpRunbook    = "See the runbook \"Automatic HA gave up\" (docs/runbooks/ha-gave-up.md)."
	fenceGaveUpRunbook = "See the runbook \"A fence command gave up\" (docs/runbooks/fence-gave-up.md)."
)

// DeriveGaveUp is a pure function of the state and the event log (in
// index order): HAGaveUp for every VM whose last ha.gave_up is later than
// its last ha.restarted while it is still placed on the unreachable node
// the event names; FenceGaveUp for every unreachable node whose last
// fence.gave_up is later than its last fence.succeeded. Both resolve by
// themselves when the node returns, the VM moves, or a later success is
// recorded.
func DeriveGaveUp(nodes []structs.Node, vms []structs.VM, events []structs.Event) []structs.Alarm {
	byID := map[string]structs.Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	placed := map[string]structs.VM{}
	for _, v := range vms {
		placed[v.ID] = v
	}
	vmGave, nodeGave := map[string]structs.Event{}, map[string]structs.Event{}
	for _, e := range events {
		switch e.Kind {
		case eventHAGaveUp:
			vmGave[e.VMID] = e
		case eventHARestarted:
			delete(vmGave, e.VMID)
		case eventFenceGaveUp:
			nodeGave[e.NodeID] = e
		case eventFenceOK:
			delete(nodeGave, e.NodeID)
		}
	}
	var out []structs.Alarm
	add := func(name string, labels map[string]string, summary, desc string, e structs.Event) {
		labels["alertname"], labels["severity"] = name, "critical"
		out = append(out, structs.Alarm{Fingerprint: fingerprint(labels), Name: name, Severity: "critical", Labels: labels,
			Summary: summary, Description: desc, Status: "firing", StartsAt: e.Time})
	}
	for id, e := range vmGave {
		v, ok := placed[id]
		n := byID[e.NodeID]
		if !ok || v.NodeID != e.NodeID || n.MonitorState != structs.MonitorUnreachable {
			continue
		}
		add("HAGaveUp", map[string]string{"vm": v.Name, "vm_id": v.ID, "node": n.Name, "node_id": n.ID},
			fmt.Sprintf("automatic HA gave up restarting vm %s away from node %s", v.Name, n.Name), e.Message+". "+haGaveUpRunbook, e)
	}
	for id, e := range nodeGave {
		n, ok := byID[id]
		if !ok || n.MonitorState != structs.MonitorUnreachable {
			continue
		}
		add("FenceGaveUp", map[string]string{"node": n.Name, "node_id": n.ID},
			fmt.Sprintf("the fence command of node %s failed every retry", n.Name), e.Message+". "+fenceGaveUpRunbook, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}
