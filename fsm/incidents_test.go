package fsm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm/state"
)

// incidentWorld is two nodes, hv1 and hv2, and VMs on hv1, in a harness
// whose clock moves one second per command.
type incidentWorld struct {
	*harness
	hv1, hv2 structs.Node
	vms      map[string]structs.VM
}

func newIncidentWorld(t *testing.T, vms ...string) *incidentWorld {
	h := newHarness(t)
	w := &incidentWorld{harness: h, hv1: node("hv1"), hv2: node("hv2"), vms: map[string]structs.VM{}}
	h.must("", CmdRegisterNode, RegisterNode{Node: w.hv1})
	h.must("", CmdRegisterNode, RegisterNode{Node: w.hv2})
	for _, name := range vms {
		v := vm(name)
		v.Spec.HA = strings.HasPrefix(name, "ha")
		h.must("", CmdCreateVM, CreateVM{VM: v, NodeID: w.hv1.ID})
		w.vms[name] = v
		w.running(name, w.hv1.ID)
	}
	return w
}

// now is the time the next command is stamped with.
func (w *incidentWorld) now() time.Time { return t0.Add(time.Duration(w.index) * time.Second) }

// running applies a heartbeat of nodeID listing the VM running at its
// current generation.
func (w *incidentWorld) running(name, nodeID string) {
	w.t.Helper()
	v, err := w.f.VM(w.vms[name].ID)
	if err != nil || v == nil {
		w.t.Fatalf("vm %s: %v", name, err)
	}
	w.must("", CmdHeartbeat, Heartbeat{NodeID: nodeID, Observations: []structs.VMObservation{
		{VMID: v.ID, State: structs.StateRunning, Reason: "booted", Generation: v.Generation}}})
}

func (w *incidentWorld) incidents(t *testing.T) []structs.Incident {
	t.Helper()
	out, err := w.f.Incidents("", "")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kinds(inc structs.Incident) []string {
	var out []string
	for _, e := range inc.Timeline {
		out = append(out, e.Kind)
	}
	return out
}

// TestIncidentLifecycle drives one failure per case through the FSM and
// checks the incidents it leaves: how many, their state, kind, each VM's
// recovery, the timeline's entries in order, and the durations.
func TestIncidentLifecycle(t *testing.T) {
	fp := "c0ffee"
	conflict := func(vmID, status string) AlarmTransition {
		return AlarmTransition{Alarm: structs.Alarm{Fingerprint: fp, Name: "UniquenessConflict", Status: status,
			Labels: map[string]string{"node_id": "elsewhere", "vm": vmID}, Summary: "two copies"}}
	}
	cases := []struct {
		name string
		vms  []string
		// steps runs the failure and returns the time of its first
		// evidence and of the last VM's recovery (zero: no check).
		steps         func(w *incidentWorld) (first, recovered time.Time)
		want          int // incidents
		state, kind   string
		outcomes      map[string]string // vm name → outcome
		timeline      []string          // kinds, in order (a subsequence of the timeline)
		timeToDetect  time.Duration
		resolutionHas string
	}{
		{
			name: "unreachable, ha restart elsewhere, drain: resolved when the node is drained",
			vms:  []string{"ha-web"},
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				last := w.now().Add(-12 * time.Second)
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable, Reason: "silent", LastHeartbeat: last})
				w.must("", CmdSetNodeFlags, SetNodeFlags{NodeID: w.hv1.ID, FencedBy: "fence-cmd"})
				w.must("", CmdPlaceVM, PlaceVM{VMID: w.vms["ha-web"].ID, NodeID: w.hv2.ID, Reason: "ha restart"})
				w.must("", CmdEvent, AppendEvent{Event: structs.Event{Kind: "ha.restarted", NodeID: w.hv1.ID, VMID: w.vms["ha-web"].ID, Message: "restarted; evidence: fenced"}})
				rec := w.now()
				w.running("ha-web", w.hv2.ID)
				if inc := w.incidents(w.t); inc[0].State != structs.IncidentOpen {
					w.t.Fatalf("resolved while its node is unreachable and not drained: %+v", inc[0])
				}
				w.must("", CmdSetManagement, SetManagement{NodeID: w.hv1.ID, State: structs.NodeDrained})
				return last, rec
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentNodeUnreachable,
			outcomes:     map[string]string{"ha-web": structs.VMRecoveredRunning},
			timeline:     []string{"node.last_heartbeat", "node.unreachable", structs.IncidentEntryOpened, "node.flags", "vm.placed", "ha.restarted", structs.IncidentEntryRecovered, "node.drained", structs.IncidentEntryResolved},
			timeToDetect: 12 * time.Second, resolutionHas: "node drained, 1 vm running",
		},
		{
			name: "unreachable then back: the VMs that kept running recover on the same node",
			vms:  []string{"ha-a", "plain"},
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				last := w.now().Add(-3 * time.Second)
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable, LastHeartbeat: last})
				w.must("", CmdEvent, AppendEvent{Event: structs.Event{Kind: "audit", NodeID: "hv1", Message: "POST /v1/nodes/hv1/fence by token:ab12: 200",
					Audit: &structs.Audit{Actor: "token:ab12", Method: "POST", Route: "POST /v1/nodes/{id}/fence", Path: "/v1/nodes/hv1/fence", Status: 200}}})
				rec := w.now()
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorNormal})
				return last, rec
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentNodeUnreachable,
			outcomes:     map[string]string{"ha-a": structs.VMRecoveredRunning, "plain": structs.VMRecoveredRunning},
			timeline:     []string{"node.unreachable", structs.IncidentEntryOpened, "audit", "node.normal", structs.IncidentEntryRecovered, structs.IncidentEntryRecovered, structs.IncidentEntryResolved},
			timeToDetect: 3 * time.Second, resolutionHas: "node normal, 2 vm running",
		},
		{
			name: "error without VMs: resolved when the faults clear",
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				first := w.now()
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorError, Faults: []string{"storage"}})
				rec := w.now()
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorNormal})
				return first, rec
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentNodeError,
			timeline: []string{"node.error", structs.IncidentEntryOpened, "node.normal", structs.IncidentEntryResolved},
		},
		{
			name: "the audit of the drain that resolved it joins after",
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				first := w.now()
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable})
				rec := w.now()
				w.must("", CmdSetManagement, SetManagement{NodeID: w.hv1.ID, State: structs.NodeDrained})
				w.must("", CmdEvent, AppendEvent{Event: structs.Event{Kind: "audit", NodeID: w.hv1.ID[:8], Message: "POST /v1/nodes/x/drain by token:ab12: 200",
					Audit: &structs.Audit{Actor: "token:ab12", Method: "POST", Route: "POST /v1/nodes/{id}/{action}", Path: "/v1/nodes/x/drain", Status: 200}}})
				w.must("", CmdEvent, AppendEvent{Event: structs.Event{Kind: "audit", NodeID: w.hv1.ID, Message: "POST /v1/agent/heartbeat by node:x: 401",
					Audit: &structs.Audit{Actor: "node:" + w.hv1.ID, Method: "POST", Route: "POST /v1/agent/heartbeat", Status: 401}}})
				return first, rec
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentNodeUnreachable,
			timeline:      []string{"node.unreachable", structs.IncidentEntryOpened, "node.drained", structs.IncidentEntryResolved, "audit"},
			resolutionHas: "node drained",
		},
		{
			name: "a stopped and a deleted VM need no restart",
			vms:  []string{"ha-x", "plain"},
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				first := w.now()
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable})
				w.must("", CmdSetDesired, SetDesired{VMID: w.vms["plain"].ID, State: structs.DesiredStopped})
				w.must("", CmdDeleteVM, DeleteVM{VMID: w.vms["ha-x"].ID})
				w.must("", CmdSetManagement, SetManagement{NodeID: w.hv1.ID, State: structs.NodeDrained})
				return first, time.Time{}
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentNodeUnreachable,
			outcomes:      map[string]string{"ha-x": structs.VMRecoveredDeleted, "plain": structs.VMRecoveredStopped},
			timeline:      []string{"node.unreachable", structs.IncidentEntryOpened, "vm.desired", structs.IncidentEntryRecovered, "vm.deleted", structs.IncidentEntryRecovered, "node.drained", structs.IncidentEntryResolved},
			resolutionHas: "node drained, 1 vm stopped, 1 vm deleted",
		},
		{
			name: "a drained node with nothing to run going away is no incident",
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				w.must("", CmdSetManagement, SetManagement{NodeID: w.hv1.ID, State: structs.NodeDrained})
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable})
				return time.Time{}, time.Time{}
			},
			want: 0,
		},
		{
			name: "still unreachable: open, with the VM not recovered",
			vms:  []string{"ha-a"},
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable})
				w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorError, Faults: []string{"kernel"}})
				return time.Time{}, time.Time{}
			},
			want: 1, state: structs.IncidentOpen, kind: structs.IncidentNodeUnreachable,
			outcomes: map[string]string{"ha-a": ""},
			timeline: []string{"node.unreachable", structs.IncidentEntryOpened, "node.error"},
		},
		{
			name: "ha gave up on a VM of a normal node: a vm_lost incident until it runs",
			vms:  []string{"ha-b"},
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				first := w.now()
				w.must("", CmdPlaceVM, PlaceVM{VMID: w.vms["ha-b"].ID, NodeID: w.hv2.ID})
				w.must("", CmdEvent, AppendEvent{Event: structs.Event{Kind: "ha.gave_up", NodeID: w.hv2.ID, VMID: w.vms["ha-b"].ID, Message: "given up"}})
				rec := w.now()
				w.running("ha-b", w.hv2.ID)
				return first.Add(time.Second), rec
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentVMLost,
			outcomes: map[string]string{"ha-b": structs.VMRecoveredRunning},
			timeline: []string{"ha.gave_up", structs.IncidentEntryOpened, structs.IncidentEntryRecovered, structs.IncidentEntryResolved},
		},
		{
			name: "uniqueness conflict: open until its alarm resolves, whose transitions join the timeline",
			vms:  []string{"ha-c"},
			steps: func(w *incidentWorld) (time.Time, time.Time) {
				first := w.now()
				w.must("", CmdAlarm, conflict(w.vms["ha-c"].ID, "firing"))
				if inc := w.incidents(w.t); len(inc) != 1 || inc[0].State != structs.IncidentOpen {
					w.t.Fatalf("after the conflict fired: %+v, want one open incident", inc)
				}
				w.must("", CmdAlarm, conflict(w.vms["ha-c"].ID, "resolved"))
				return first, first
			},
			want: 1, state: structs.IncidentResolved, kind: structs.IncidentUniquenessConflict,
			outcomes: map[string]string{"ha-c": structs.VMRecoveredRunning},
			timeline: []string{"alarm.firing", structs.IncidentEntryOpened, structs.IncidentEntryRecovered, "alarm.resolved", structs.IncidentEntryResolved},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newIncidentWorld(t, c.vms...)
			first, rec := c.steps(w)
			got := w.incidents(t)
			if len(got) != c.want {
				t.Fatalf("%d incidents, want %d: %+v", len(got), c.want, got)
			}
			if c.want == 0 {
				return
			}
			inc := got[0]
			t.Logf("incident %d %s %s: ttd %s ttr %s, %q; timeline %v", inc.ID, inc.Kind, inc.State, inc.TimeToDetect, inc.TimeToRecover, inc.Resolution, kinds(inc))
			if inc.State != c.state || inc.Kind != c.kind {
				t.Fatalf("incident %s %s, want %s %s", inc.State, inc.Kind, c.state, c.kind)
			}
			for name, want := range c.outcomes {
				i := slices.IndexFunc(inc.VMs, func(v structs.IncidentVM) bool { return v.VMID == w.vms[name].ID })
				if i < 0 || inc.VMs[i].Outcome != want {
					t.Fatalf("vm %s: %+v, want outcome %q", name, inc.VMs, want)
				}
			}
			if len(inc.VMs) != len(c.outcomes) {
				t.Fatalf("vms %+v, want %d", inc.VMs, len(c.outcomes))
			}
			if !isSubsequence(kinds(inc), c.timeline) {
				t.Fatalf("timeline %v, want in order %v", kinds(inc), c.timeline)
			}
			for _, e := range inc.Timeline {
				derived := e.Kind == structs.IncidentEntryOpened || e.Kind == structs.IncidentEntryRecovered ||
					e.Kind == structs.IncidentEntryResolved || e.Kind == "node.last_heartbeat"
				if derived != (e.EventSeq == 0) {
					t.Fatalf("entry %+v: an event's entry names its event, a derived one none", e)
				}
				if e.Kind == "audit" && e.Actor != "token:ab12" {
					t.Fatalf("audit entry %+v without its actor", e)
				}
			}
			if inc.TimeToDetect != c.timeToDetect {
				t.Fatalf("time to detect %s, want %s", inc.TimeToDetect, c.timeToDetect)
			}
			if c.state == structs.IncidentResolved {
				if !first.IsZero() && !inc.FirstEvidence.Equal(first) {
					t.Fatalf("first evidence %s, want %s", inc.FirstEvidence, first)
				}
				if !rec.IsZero() && (!inc.RecoveredAt.Equal(rec) || inc.TimeToRecover != rec.Sub(first)) {
					t.Fatalf("recovered at %s after %s, want %s after %s", inc.RecoveredAt, inc.TimeToRecover, rec, rec.Sub(first))
				}
				if !strings.Contains(inc.Resolution, c.resolutionHas) {
					t.Fatalf("resolution %q, want it to say %q", inc.Resolution, c.resolutionHas)
				}
				open, err := w.f.Incidents(structs.IncidentOpen, "")
				if err != nil || len(open) != 0 {
					t.Fatalf("open incidents %+v %v", open, err)
				}
			} else if !inc.ResolvedAt.IsZero() || inc.TimeToRecover != 0 {
				t.Fatalf("open incident with a resolution: %+v", inc)
			}
		})
	}
}

func isSubsequence(have, want []string) bool {
	i := 0
	for _, h := range have {
		if i < len(want) && h == want[i] {
			i++
		}
	}
	return i == len(want)
}

// TestIncidentsOneAtATime: a node that fails again after it recovered
// opens a second incident; the open index leaves nothing behind; the
// node filter and retention work.
func TestIncidentsOneAtATime(t *testing.T) {
	w := newIncidentWorld(t, "ha-a")
	for i := 0; i < 5; i++ {
		w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable})
		w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorNormal})
	}
	w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv2.ID, State: structs.MonitorError, Faults: []string{"disk"}})
	all := w.incidents(t)
	if len(all) != 6 || all[0].NodeID != w.hv2.ID || all[0].State != structs.IncidentOpen {
		t.Fatalf("incidents %+v, want 5 resolved on hv1 and, newest, one open on hv2", all)
	}
	for i, inc := range all[1:] {
		if inc.State != structs.IncidentResolved || inc.ID != uint64(5-i) {
			t.Fatalf("incident %+v", inc)
		}
	}
	if on, _ := w.f.Incidents("", w.hv1.ID); len(on) != 5 {
		t.Fatalf("node filter: %d incidents on hv1, want 5", len(on))
	}
	if n := w.f.ResolvedIncidents(); n != 5 {
		t.Fatalf("%d resolved counted, want 5", n)
	}
	w.must("", CmdPruneIncidents, PruneIncidents{Keep: 2})
	all = w.incidents(t)
	ids := []uint64{}
	for _, inc := range all {
		ids = append(ids, inc.ID)
	}
	if !slices.Equal(ids, []uint64{6, 5, 4}) || w.f.ResolvedIncidents() != 2 {
		t.Fatalf("after pruning to 2 resolved: ids %v (resolved %d), want [6 5 4]", ids, w.f.ResolvedIncidents())
	}
	dump, err := w.f.Dump()
	if err != nil {
		t.Fatal(err)
	}
	// Of the open keys only hv2's remains; the resolved ones are kept
	// once per node and VM (late audit records).
	open := 0
	for k := range dump["incident_keys"] {
		if !strings.HasPrefix(k, "r/") {
			open++
		}
	}
	if open != 1 || dump["incident_keys"][state.NodeIncidentKey(w.hv2.ID)] == "" || len(dump["incident_keys"]) != 3 {
		t.Fatalf("incident index %v, want hv2's open incident and hv1's and its VM's last resolved one", dump["incident_keys"])
	}
}

// TestIncidentTimelineBounded: a long incident keeps MaxIncidentTimeline
// entries and counts the rest (here 2 + 320 + node.normal − 300 = 23),
// and still records its resolution.
func TestIncidentTimelineBounded(t *testing.T) {
	w := newIncidentWorld(t)
	w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorUnreachable})
	for i := 0; i < structs.MaxIncidentTimeline+20; i++ {
		w.must("", CmdEvent, AppendEvent{Event: structs.Event{Kind: "fence.failed", NodeID: w.hv1.ID, Message: fmt.Sprintf("attempt %d", i)}})
	}
	w.must("", CmdSetMonitor, SetMonitor{NodeID: w.hv1.ID, State: structs.MonitorNormal})
	inc := w.incidents(t)[0]
	if len(inc.Timeline) != structs.MaxIncidentTimeline+1 || inc.Dropped != 23 || inc.State != structs.IncidentResolved ||
		inc.Timeline[len(inc.Timeline)-1].Kind != structs.IncidentEntryResolved {
		t.Fatalf("timeline of %d entries, %d dropped, state %s", len(inc.Timeline), inc.Dropped, inc.State)
	}
}
