package alarms

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"

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

// EventLog is the event log of the replicated state; when the alarmer's
// State has one (the FSM does), HAGaveUp and FenceGaveUp are derived.
type EventLog interface {
	Events(after uint64, limit int) ([]structs.Event, error)
}

// gaveUpLog folds the event log incrementally: the last give-up or
// success event per VM and per node, from the retained log (a new leader
// reads it from the start and derives the same alarms).
type gaveUpLog struct {
	mu    sync.Mutex
	after uint64
	last  map[string]structs.Event // "vm/ID" or "node/ID" → newest relevant event
}

// read returns the newest relevant event per VM and node, in Seq order.
func (g *gaveUpLog) read(log EventLog) ([]structs.Event, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.last == nil {
		g.last = map[string]structs.Event{}
	}
	for range 1000 { // bounded: the log keeps at most fsm/state.MaxEvents
		evs, err := log.Events(g.after, 500)
		if err != nil {
			return nil, fmt.Errorf("events after %d: %w", g.after, err)
		}
		for _, e := range evs {
			g.after = e.Seq
			switch e.Kind {
			case eventHAGaveUp, eventHARestarted:
				g.last["vm/"+e.VMID] = e
			case eventFenceGaveUp, eventFenceOK:
				g.last["node/"+e.NodeID] = e
			}
		}
		if len(evs) < 500 {
			break
		}
	}
	out := slices.Collect(maps.Values(g.last))
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}
