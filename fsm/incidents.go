package fsm

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/state"
)

// Incidents (docs/incidents.md) are kept by the FSM itself, as a pure
// function of what each command wrote: trackIncidents runs at the end of
// every applied command, inside its transaction, over the events the
// command appended and the nodes and VMs it stored. An event about a node
// or VM of an open incident (found through the open-incident index, one
// bbolt read per event and per record written) joins its timeline; an
// event that is a failure's verdict opens one; the incidents touched are
// then judged for recovery against the state. Nothing scans the event
// log or the incident list on apply.

// MaxResolvedIncidents is how many resolved incidents the state keeps at
// most, whatever the leader's --incident-retention.
const MaxResolvedIncidents = state.MaxResolvedIncidents

// alarmVMLabels are the labels that name a VM in UniquenessConflict and
// VMHeld, in order of preference.
var alarmVMLabels = []string{"vm_id", "vm"}

// incidentTracker is the work of one command's transaction.
type incidentTracker struct {
	a       *applier
	loaded  map[uint64]*trackedIncident
	touched []uint64 // ids to judge, in order of first touch
}

type trackedIncident struct {
	inc     *structs.Incident
	wasOpen bool
	dirty   bool
}

func (a *applier) trackIncidents() error {
	events, written := a.tx.Appended(), a.tx.Written()
	if len(events) == 0 && len(written) == 0 {
		return nil
	}
	t := &incidentTracker{a: a, loaded: map[uint64]*trackedIncident{}}
	for _, e := range events {
		if err := t.event(e); err != nil {
			return err
		}
	}
	for _, w := range written {
		key := state.VMIncidentKey(w.ID)
		if w.IsNode {
			key = state.NodeIncidentKey(w.ID)
		}
		if id := a.tx.IndexedIncident(key); id != 0 {
			if _, err := t.load(id); err != nil {
				return err
			}
		}
		if w.IsNode && !w.Deleted {
			// A VM of another node's incident counts as running again only
			// on a normal node: this node's change may be what recovers it
			// (found by the simulator's invariant 6, seed 810).
			if err := t.loadIncidentsOfVMsOn(w.ID); err != nil {
				return err
			}
		}
	}
	for _, id := range t.touched {
		if err := t.judge(t.loaded[id]); err != nil {
			return err
		}
	}
	for _, id := range t.touched {
		ti := t.loaded[id]
		if !ti.dirty {
			continue
		}
		if err := a.tx.PutIncident(ti.inc, ti.wasOpen); err != nil {
			return err
		}
		if ti.wasOpen && ti.inc.State == structs.IncidentResolved {
			if _, err := a.tx.PruneIncidents(state.MaxResolvedIncidents); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadIncidentsOfVMsOn loads the open incidents of the VMs placed on a
// node that is normal: one key lookup per VM, no record decoded.
func (t *incidentTracker) loadIncidentsOfVMsOn(nodeID string) error {
	n, err := t.a.tx.Node(nodeID)
	if err != nil || n == nil || n.MonitorState != structs.MonitorNormal {
		return err
	}
	for _, vmID := range t.a.tx.VMIDsOnNode(nodeID) {
		if id := t.a.tx.IndexedIncident(state.VMIncidentKey(vmID)); id != 0 {
			if _, err := t.load(id); err != nil {
				return err
			}
		}
	}
	return nil
}

// load reads an incident once per transaction and marks it to be judged.
func (t *incidentTracker) load(id uint64) (*trackedIncident, error) {
	if ti, ok := t.loaded[id]; ok {
		return ti, nil
	}
	inc, err := t.a.tx.Incident(id)
	if err != nil {
		return nil, err
	}
	if inc == nil {
		return nil, nil
	}
	ti := &trackedIncident{inc: inc, wasOpen: inc.State == structs.IncidentOpen}
	t.loaded[id] = ti
	t.touched = append(t.touched, id)
	return ti, nil
}

// event files one appended event: into the open incident of its VM, else
// of its node, else (for an alarm's transition) of the incident the alarm
// fired in; or it opens an incident when it is a failure's verdict.
func (t *incidentTracker) event(e structs.Event) error {
	tx := t.a.tx
	nodeID, vmID := e.NodeID, e.VMID
	var al *structs.Alarm
	if strings.HasPrefix(e.Kind, "alarm.") && t.a.alarm != nil {
		al = t.a.alarm
		for _, l := range alarmVMLabels {
			if vmID == "" {
				vmID = al.Labels[l]
			}
		}
	}
	if e.Kind == structs.EventAudit {
		if e.Audit == nil || strings.HasPrefix(e.Audit.Route, "POST /v1/agent/") || strings.HasPrefix(e.Audit.Actor, "node:") {
			return nil // an agent's own writes are the heartbeats the timeline already has
		}
		// The audit names its target as the operator typed it.
		nodeID, vmID = lookupRef(nodeID, tx.LookupNode), lookupRef(vmID, tx.LookupVM)
	}
	var id uint64
	if vmID != "" {
		id = tx.IndexedIncident(state.VMIncidentKey(vmID))
	}
	if id == 0 && nodeID != "" {
		id = tx.IndexedIncident(state.NodeIncidentKey(nodeID))
	}
	if id == 0 && al != nil {
		id = tx.IndexedIncident(alarmKey(al.Fingerprint))
	}
	if id == 0 && e.Kind == structs.EventAudit {
		var err error
		if id, err = t.recentlyResolved(e, nodeID, vmID); err != nil {
			return err
		}
	}
	var ti *trackedIncident
	if id != 0 {
		var err error
		if ti, err = t.load(id); err != nil {
			return err
		}
	}
	if ti == nil {
		var err error
		if ti, err = t.open(e, nodeID, vmID, al); err != nil {
			return err
		}
		if ti == nil {
			if al != nil && al.Status != "firing" { // its incident was pruned
				return tx.UnindexIncident(alarmKey(al.Fingerprint))
			}
			return nil
		}
	} else {
		t.add(ti, entryOf(e, nodeID, vmID))
		if vmID != "" && ti.inc.State == structs.IncidentOpen && opensVMIncident(e, al) != "" {
			if err := t.addVM(ti, vmID); err != nil {
				return err
			}
		}
	}
	if al != nil {
		return t.alarm(ti, al)
	}
	return nil
}

// AuditGrace is how long after an incident resolved the audit record of
// an operator's write about its node or VMs still joins its timeline: the
// audit is appended after the write it records, which may be the one that
// resolved the incident (a drain, a VM stop).
const AuditGrace = time.Minute

// resolvedKey indexes the incident that last resolved for a node or VM
// (one key each, replaced by the next), for the audits that follow.
func resolvedKey(key string) string { return "r/" + key }

// recentlyResolved is the incident an audit record joins when none is
// open for its node or VM: the one that resolved for them at most
// AuditGrace before; 0 when there is none (the stale key is dropped).
func (t *incidentTracker) recentlyResolved(e structs.Event, nodeID, vmID string) (uint64, error) {
	tx := t.a.tx
	for _, k := range []string{state.VMIncidentKey(vmID), state.NodeIncidentKey(nodeID)} {
		if k == state.VMIncidentKey("") || k == state.NodeIncidentKey("") {
			continue
		}
		id := tx.IndexedIncident(resolvedKey(k))
		if id == 0 {
			continue
		}
		inc, err := tx.Incident(id)
		if err != nil {
			return 0, err
		}
		if inc != nil && inc.State == structs.IncidentResolved && e.Time.Sub(inc.ResolvedAt) <= AuditGrace {
			return id, nil
		}
		if err := tx.UnindexIncident(resolvedKey(k)); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

// lookupRef resolves an id, name or unique id prefix; "" when it names
// nothing or more than one.
func lookupRef(ref string, lookup func(string) (string, []string)) string {
	if ref == "" {
		return ""
	}
	id, matches := lookup(ref)
	if id == "" && len(matches) == 1 {
		id = matches[0]
	}
	return id
}

// alarmKey indexes a firing alarm under the incident it fired in, so that
// its resolution joins that incident's timeline even after it resolved.
func alarmKey(fingerprint string) string { return "a/" + fingerprint }

func (t *incidentTracker) alarm(ti *trackedIncident, al *structs.Alarm) error {
	inc := ti.inc
	i := slices.IndexFunc(inc.Alarms, func(x structs.IncidentAlarm) bool { return x.Fingerprint == al.Fingerprint })
	if i < 0 {
		inc.Alarms = append(inc.Alarms, structs.IncidentAlarm{Name: al.Name, Fingerprint: al.Fingerprint})
		i = len(inc.Alarms) - 1
	}
	inc.Alarms[i].Status = al.Status
	ti.dirty = true
	if al.Status == "firing" {
		return t.a.tx.IndexIncident(alarmKey(al.Fingerprint), inc.ID)
	}
	return t.a.tx.UnindexIncident(alarmKey(al.Fingerprint))
}

// opensVMIncident is the kind of VM incident e opens, or "".
func opensVMIncident(e structs.Event, al *structs.Alarm) string {
	switch {
	case e.Kind == "ha.gave_up":
		return structs.IncidentVMLost
	case e.Kind == "vm.migration_unknown":
		return structs.IncidentVMHeld
	case e.Kind == "vm.uniqueness_conflict":
		return structs.IncidentUniquenessConflict
	case al != nil && e.Kind == "alarm.firing" && al.Name == "UniquenessConflict":
		return structs.IncidentUniquenessConflict
	}
	return ""
}

// open opens an incident when e is a failure's verdict; nil otherwise.
func (t *incidentTracker) open(e structs.Event, nodeID, vmID string, al *structs.Alarm) (*trackedIncident, error) {
	tx := t.a.tx
	now := tx.Now()
	inc := &structs.Incident{State: structs.IncidentOpen, NodeID: nodeID, DetectedAt: now, FirstEvidence: now,
		OpenedIndex: tx.Index(), VMs: []structs.IncidentVM{}}
	var vms []string
	switch kind := opensVMIncident(e, al); {
	case (e.Kind == "node."+structs.MonitorUnreachable || e.Kind == "node."+structs.MonitorError) && nodeID != "":
		n, err := tx.Node(nodeID)
		if err != nil || n == nil {
			return nil, err
		}
		on, err := tx.VMsOnNode(n.ID)
		if err != nil {
			return nil, err
		}
		for _, v := range on {
			if v.DesiredState == structs.DesiredRunning && tx.IndexedIncident(state.VMIncidentKey(v.ID)) == 0 {
				vms = append(vms, v.ID)
			}
		}
		if n.ManagementState == structs.NodeDrained && len(vms) == 0 {
			return nil, nil // planned: a drained node with nothing to run went away
		}
		inc.NodeName = n.Name
		inc.Kind = structs.IncidentNodeUnreachable
		inc.Summary = fmt.Sprintf("node %s unreachable", n.Name)
		if e.Kind == "node."+structs.MonitorError {
			inc.Kind = structs.IncidentNodeError
			inc.Summary = fmt.Sprintf("node %s reports faults %v", n.Name, n.Faults)
		}
		if lh := t.a.lastHeartbeat; !lh.IsZero() && lh.Before(now) && e.Kind == "node."+structs.MonitorUnreachable {
			inc.FirstEvidence = lh
		}
	case kind != "" && vmID != "":
		v, err := tx.VM(vmID)
		if err != nil || v == nil {
			return nil, err
		}
		inc.Kind, inc.VMID, vms = kind, v.ID, []string{v.ID}
		if inc.NodeID == "" {
			inc.NodeID = v.NodeID
		}
		if n, err := tx.Node(inc.NodeID); err != nil {
			return nil, err
		} else if n != nil {
			inc.NodeName = n.Name
		}
		switch kind {
		case structs.IncidentVMLost:
			inc.Summary = fmt.Sprintf("vm %s lost: automatic restart given up", v.Name)
		case structs.IncidentVMHeld:
			inc.Summary = fmt.Sprintf("vm %s held: live migration outcome unknown", v.Name)
		default:
			inc.Summary = fmt.Sprintf("vm %s: uniqueness conflict", v.Name)
		}
	default:
		return nil, nil
	}
	id, err := tx.NextIncidentID()
	if err != nil {
		return nil, err
	}
	inc.ID = id
	inc.TimeToDetect = inc.DetectedAt.Sub(inc.FirstEvidence)
	ti := &trackedIncident{inc: inc, wasOpen: true, dirty: true}
	t.loaded[id] = ti
	t.touched = append(t.touched, id)
	if inc.VMID == "" {
		if err := tx.IndexIncident(state.NodeIncidentKey(nodeID), id); err != nil {
			return nil, err
		}
	}
	if inc.FirstEvidence.Before(now) {
		t.add(ti, structs.IncidentEntry{Time: inc.FirstEvidence, Index: tx.Index(), Kind: "node.last_heartbeat", NodeID: nodeID,
			Message: fmt.Sprintf("last heartbeat received from node %s", inc.NodeName)})
	}
	t.add(ti, entryOf(e, nodeID, vmID))
	t.add(ti, structs.IncidentEntry{Time: now, Index: tx.Index(), Kind: structs.IncidentEntryOpened, NodeID: nodeID, VMID: inc.VMID,
		Message: fmt.Sprintf("incident %d opened: %s", id, inc.Summary)})
	for _, v := range vms {
		if err := t.addVM(ti, v); err != nil {
			return nil, err
		}
	}
	return ti, nil
}

// addVM adds a VM to an open incident (once) and indexes it.
func (t *incidentTracker) addVM(ti *trackedIncident, vmID string) error {
	if slices.ContainsFunc(ti.inc.VMs, func(x structs.IncidentVM) bool { return x.VMID == vmID }) {
		return nil
	}
	v, err := t.a.tx.VM(vmID)
	if err != nil || v == nil {
		return err
	}
	ti.inc.VMs = append(ti.inc.VMs, structs.IncidentVM{VMID: v.ID, Name: v.Name, HA: v.Spec.HA})
	ti.dirty = true
	return t.a.tx.IndexIncident(state.VMIncidentKey(v.ID), ti.inc.ID)
}

func entryOf(e structs.Event, nodeID, vmID string) structs.IncidentEntry {
	en := structs.IncidentEntry{Time: e.Time, Index: e.Index, EventSeq: e.Seq, Kind: e.Kind, NodeID: nodeID, VMID: vmID,
		TaskID: e.TaskID, Message: e.Message}
	if e.Audit != nil {
		en.Actor = e.Audit.Actor
	}
	return en
}

// add appends a timeline entry; past MaxIncidentTimeline only the derived
// entries (recoveries, resolution) are kept, the others counted.
func (t *incidentTracker) add(ti *trackedIncident, en structs.IncidentEntry) {
	ti.dirty = true
	derived := en.Kind == structs.IncidentEntryRecovered || en.Kind == structs.IncidentEntryResolved
	if len(ti.inc.Timeline) >= structs.MaxIncidentTimeline && !derived {
		ti.inc.Dropped++
		return
	}
	ti.inc.Timeline = append(ti.inc.Timeline, en)
}

// judge notes each affected VM that recovered and resolves the incident
// when the node is back (normal, drained or removed), every affected VM
// runs again (or was stopped or deleted) and, for a uniqueness conflict,
// its alarm resolved.
func (t *incidentTracker) judge(ti *trackedIncident) error {
	inc := ti.inc
	if inc.State != structs.IncidentOpen {
		return nil
	}
	tx := t.a.tx
	now := tx.Now()
	nodeBack := true
	nodeWhy := ""
	if inc.VMID == "" {
		n, err := tx.Node(inc.NodeID)
		if err != nil {
			return err
		}
		switch {
		case n == nil:
			nodeWhy = "node removed"
		case n.MonitorState == structs.MonitorNormal:
			nodeWhy = "node normal"
		case n.ManagementState == structs.NodeDrained:
			nodeWhy = "node drained"
		default:
			nodeBack = false
		}
	}
	all := true
	for i := range inc.VMs {
		iv := &inc.VMs[i]
		if !iv.RecoveredAt.IsZero() {
			continue
		}
		outcome, on, err := t.recovered(iv.VMID)
		if err != nil {
			return err
		}
		if outcome == "" {
			all = false
			continue
		}
		iv.RecoveredAt, iv.Outcome, iv.RecoveredOn = now, outcome, on
		msg := fmt.Sprintf("vm %s %s", iv.Name, outcome)
		if on != "" {
			name := on
			if n, err := tx.Node(on); err != nil {
				return err
			} else if n != nil {
				name = n.Name
			}
			msg += " on node " + name
		}
		t.add(ti, structs.IncidentEntry{Time: now, Index: tx.Index(), Kind: structs.IncidentEntryRecovered, NodeID: on, VMID: iv.VMID, Message: msg})
	}
	if inc.Kind == structs.IncidentUniquenessConflict &&
		slices.ContainsFunc(inc.Alarms, func(a structs.IncidentAlarm) bool { return a.Status == "firing" }) {
		return nil
	}
	if !nodeBack || !all {
		return nil
	}
	inc.State, inc.ResolvedAt, inc.RecoveredAt = structs.IncidentResolved, now, now
	if len(inc.VMs) > 0 {
		inc.RecoveredAt = time.Time{}
		for _, v := range inc.VMs {
			if v.RecoveredAt.After(inc.RecoveredAt) {
				inc.RecoveredAt = v.RecoveredAt
			}
		}
	}
	inc.TimeToRecover = inc.RecoveredAt.Sub(inc.FirstEvidence)
	parts := []string{}
	if nodeWhy != "" {
		parts = append(parts, nodeWhy)
	}
	counts := map[string]int{}
	for _, v := range inc.VMs {
		counts[v.Outcome]++
	}
	for _, o := range []string{structs.VMRecoveredRunning, structs.VMRecoveredStopped, structs.VMRecoveredDeleted} {
		if counts[o] > 0 {
			parts = append(parts, fmt.Sprintf("%d vm %s", counts[o], o))
		}
	}
	inc.Resolution = strings.Join(parts, ", ")
	t.add(ti, structs.IncidentEntry{Time: now, Index: tx.Index(), Kind: structs.IncidentEntryResolved, NodeID: inc.NodeID, VMID: inc.VMID,
		Message: fmt.Sprintf("incident %d resolved (%s); time to recover %s", inc.ID, inc.Resolution, inc.TimeToRecover.Round(time.Millisecond))})
	keys := []string{}
	if inc.VMID == "" {
		keys = append(keys, state.NodeIncidentKey(inc.NodeID))
	}
	for _, v := range inc.VMs {
		if tx.IndexedIncident(state.VMIncidentKey(v.VMID)) == inc.ID {
			keys = append(keys, state.VMIncidentKey(v.VMID))
		}
	}
	for _, k := range keys {
		if err := tx.UnindexIncident(k); err != nil {
			return err
		}
		if err := tx.IndexIncident(resolvedKey(k), inc.ID); err != nil {
			return err
		}
	}
	ti.dirty = true
	return nil
}

// recovered says whether an affected VM no longer needs recovering: it
// runs again (observed running, at its current placement and generation,
// on a node that is normal, not held), it was stopped, or deleted.
func (t *incidentTracker) recovered(vmID string) (outcome, on string, err error) {
	v, err := t.a.tx.VM(vmID)
	if err != nil {
		return "", "", err
	}
	switch {
	case v == nil:
		return structs.VMRecoveredDeleted, "", nil
	case v.DesiredState != structs.DesiredRunning:
		return structs.VMRecoveredStopped, "", nil
	case v.NodeID == "" || v.Held() || v.Observed == nil || v.Observed.State != structs.StateRunning ||
		!v.ObservationCurrent(v.Observed.NodeID, v.Observed.Generation):
		return "", "", nil
	}
	n, err := t.a.tx.Node(v.NodeID)
	if err != nil || n == nil || n.MonitorState != structs.MonitorNormal {
		return "", "", err
	}
	return structs.VMRecoveredRunning, v.NodeID, nil
}

func (a *applier) pruneIncidents(p PruneIncidents) (string, error) {
	_, err := a.tx.PruneIncidents(p.Keep)
	return "", err
}
