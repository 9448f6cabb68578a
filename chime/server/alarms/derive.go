package alarms

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// FailedTaskAlarmFor is how long a failed task keeps its alarm firing
// unless a later task of the same kind on the same node or VM succeeds.
const FailedTaskAlarmFor = 24 * time.Hour

// HeldAlarmAfter is how long a VM may be held (its live migration's
// outcome unknown, started nowhere) before the VMHeld alarm fires: longer
// than a lost report takes to be retried, shorter than an operator's
// patience with a VM that runs nowhere.
const HeldAlarmAfter = 5 * time.Minute

// heldKey names one hold: a VM's migration (task and generation).
func heldKey(v structs.VM) string {
	return fmt.Sprintf("%s/%s/%d", v.ID, v.Migration.TaskID, v.Migration.Generation)
}

// DeriveHeld is the VMHeld alarm of every VM held (uniqueness rule 8) for
// at least HeldAlarmAfter since since[heldKey] (when the leader first saw
// it held), or whose alarm is already firing (a new leader does not
// resolve it only because it started counting later).
func DeriveHeld(vms []structs.VM, nodes []structs.Node, since map[string]time.Time, firing map[string]bool, now time.Time) []structs.Alarm {
	names := map[string]string{}
	for _, n := range nodes {
		names[n.ID] = n.Name
	}
	name := func(id string) string {
		if names[id] != "" {
			return names[id]
		}
		return id
	}
	var out []structs.Alarm
	for _, v := range vms {
		if !v.Held() {
			continue
		}
		m := v.Migration
		labels := map[string]string{"alertname": "VMHeld", "severity": "critical", "vm": v.Name, "vm_id": v.ID,
			"node": name(m.From), "node_id": m.From, "to": name(m.To)}
		fp := fingerprint(labels)
		first, seen := since[heldKey(v)]
		if !firing[fp] && (!seen || now.Sub(first) < HeldAlarmAfter) {
			continue
		}
		out = append(out, structs.Alarm{Fingerprint: fp, Name: "VMHeld", Severity: "critical", Labels: labels,
			Summary: fmt.Sprintf("vm %s is held: the outcome of its live migration %s → %s is unknown", v.Name, name(m.From), name(m.To)),
			Description: "It runs on neither node as far as chime can prove, and is started nowhere until one of them reports it " +
				"running or is fenced (chime node drain + rebuild --confirm-fenced of a node that is powered off). See the runbook " +
				"\"A VM is held\". Reason: " + m.UnknownReason,
			Status: "firing", StartsAt: first})
	}
	return out
}

// IdentityConflictAlarmFor is how long the last evidence that another
// agent claims a node keeps its NodeIdentityConflict alarm firing. The
// heartbeat monitor records continuing evidence again well within it.
const IdentityConflictAlarmFor = time.Hour

// fingerprint identifies an alarm by its labels, stable across leaders.
func fingerprint(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, labels[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Derive is a pure function of the state: what is firing now, sorted by
// fingerprint. A node's recorded stale copies (structs.Node.StaleCopies)
// are UniquenessConflict alarms naming both nodes: the one the copy ran
// on and the one the VM is placed on.
func Derive(nodes []structs.Node, tasks []structs.Task, now time.Time) []structs.Alarm {
	var out []structs.Alarm
	add := func(name, severity string, labels map[string]string, summary, desc string, since time.Time) {
		labels["alertname"], labels["severity"] = name, severity
		out = append(out, structs.Alarm{Fingerprint: fingerprint(labels), Name: name, Severity: severity, Labels: labels,
			Summary: summary, Description: desc, Status: "firing", StartsAt: since})
	}
	for _, n := range nodes {
		switch n.MonitorState {
		case structs.MonitorUnreachable:
			add("NodeUnreachable", "critical", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("node %s is unreachable", n.Name),
				"No heartbeat and the ping-back failed; its VMs may be down. See the runbook for a dead node.", n.StateSince)
		case structs.MonitorError:
			add("NodeError", "warning", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("node %s reports faults: %v", n.Name, n.Faults),
				"The agent reports faults; evacuate the node if they persist.", n.StateSince)
		}
		if n.IdentityConflict != "" && now.Sub(n.IdentityConflictAt) < IdentityConflictAlarmFor {
			add("NodeIdentityConflict", "critical", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("another agent claims node %s", n.Name),
				n.IdentityConflict+". Two agents must never answer for one node: find the second host (a cloned host UUID or data dir) and stop its agent; see the runbook for a lost data dir.",
				n.IdentityConflictAt)
		}
	}
	names := map[string]string{}
	for _, n := range nodes {
		names[n.ID] = n.Name
	}
	for _, n := range nodes {
		for _, c := range n.StaleCopies {
			other := names[c.PlacedOn]
			if other == "" {
				other = c.PlacedOn
			}
			if other == "" {
				other = "none"
			}
			what := "runs"
			if !c.Running() {
				what = "ran"
			}
			if c.Destroyed {
				what = "ran, until its agent destroyed it,"
			}
			add("UniquenessConflict", "critical",
				map[string]string{"node": n.Name, "node_id": n.ID, "vm": c.VMID, "other_node": other, "other_node_id": c.PlacedOn},
				fmt.Sprintf("vm %s %s on node %s as well as on %s", structs.ShortID(c.VMID), what, n.Name, other),
				fmt.Sprintf("A copy of vm %s (generation %d) %s on node %s, while the VM is placed on node %s (generation %d). "+
					"Check that the VM runs once, on %s, and that its disks are consistent: two copies may have run at once.",
					c.VMID, c.Generation, what, n.Name, other, c.PlacedGeneration, other), c.Since)
		}
	}
	for _, t := range tasks {
		if t.State != structs.TaskFailed || taskFailureSettled(t, tasks, now) {
			continue
		}
		labels := map[string]string{"task": t.ID, "kind": t.Kind}
		if t.NodeID != "" {
			labels["node"], labels["node_id"] = names[t.NodeID], t.NodeID
			if labels["node"] == "" {
				labels["node"] = t.NodeID
			}
		}
		if t.VMID != "" {
			labels["vm"] = t.VMID
		}
		add("TaskFailed", "warning", labels, fmt.Sprintf("%s task %s failed", t.Kind, t.ID), t.Error, t.Updated)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

// WithExtra adds alarms derived elsewhere (Config.Extra) to derived ones:
// each gets its alertname and severity labels and its fingerprint, like
// Derive's own, and the result is sorted by fingerprint.
func WithExtra(derived, extra []structs.Alarm) []structs.Alarm {
	out := slices.Clone(derived)
	for _, al := range extra {
		labels := maps.Clone(al.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		labels["alertname"], labels["severity"] = al.Name, al.Severity
		al.Labels, al.Fingerprint, al.Status = labels, fingerprint(labels), "firing"
		out = append(out, al)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

// taskFailureSettled reports whether a failed task's alarm resolves: a
// later task of the same kind for the same node/VM succeeded, or it is old.
func taskFailureSettled(t structs.Task, tasks []structs.Task, now time.Time) bool {
	if !t.Updated.IsZero() && now.Sub(t.Updated) > FailedTaskAlarmFor {
		return true
	}
	for _, o := range tasks {
		if o.CreateIndex > t.CreateIndex && o.Kind == t.Kind && o.State == structs.TaskSucceeded &&
			o.NodeID == t.NodeID && o.VMID == t.VMID {
			return true
		}
	}
	return false
}

// Transitions is a pure function: the transitions that turn the recorded
// alarms into the current ones, sorted by fingerprint. A resolution is
// stamped with now.
func Transitions(current []structs.Alarm, recorded []fsm.AlarmRecord, now time.Time) []structs.Alarm {
	rec := map[string]structs.Alarm{}
	for _, r := range recorded {
		rec[r.Alarm.Fingerprint] = r.Alarm
	}
	var out []structs.Alarm
	seen := map[string]bool{}
	for _, al := range current {
		seen[al.Fingerprint] = true
		if prev, ok := rec[al.Fingerprint]; !ok || prev.Status != "firing" {
			out = append(out, al)
		}
	}
	for fp, prev := range rec {
		if !seen[fp] && prev.Status == "firing" {
			prev.Status, prev.EndsAt = "resolved", now
			out = append(out, prev)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}
