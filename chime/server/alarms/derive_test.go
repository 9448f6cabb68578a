package alarms

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

func TestAlarmTransitions(t *testing.T) {
	now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	a := structs.Alarm{Fingerprint: "aaaa", Status: "firing", Name: "NodeUnreachable"}
	b := structs.Alarm{Fingerprint: "bbbb", Status: "firing", Name: "NodeError"}
	tests := []struct {
		name     string
		current  []structs.Alarm
		recorded []fsm.AlarmRecord
		want     map[string]string // fingerprint → status of the transition
	}{
		{"nothing", nil, nil, map[string]string{}},
		{"new alarm fires", []structs.Alarm{a}, nil, map[string]string{"aaaa": "firing"}},
		{"still firing: no transition", []structs.Alarm{a}, []fsm.AlarmRecord{{Alarm: a, Delivered: true}}, map[string]string{}},
		{"still firing, undelivered: no new transition", []structs.Alarm{a}, []fsm.AlarmRecord{{Alarm: a}}, map[string]string{}},
		{"condition cleared: resolves", nil, []fsm.AlarmRecord{{Alarm: a, Delivered: true}}, map[string]string{"aaaa": "resolved"}},
		{"one clears, one fires", []structs.Alarm{b}, []fsm.AlarmRecord{{Alarm: a, Delivered: true}}, map[string]string{"aaaa": "resolved", "bbbb": "firing"}},
		{"fires again after a resolution", []structs.Alarm{a}, []fsm.AlarmRecord{{Alarm: structs.Alarm{Fingerprint: "aaaa", Status: "resolved"}}}, map[string]string{"aaaa": "firing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			for _, al := range Transitions(tt.current, tt.recorded, now) {
				got[al.Fingerprint] = al.Status
				if al.Status == "resolved" && !al.EndsAt.Equal(now) {
					t.Errorf("resolved alarm has endsAt %v", al.EndsAt)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("transitions %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("transitions %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestDeriveAlarmsFingerprintsAreStable(t *testing.T) {
	n := []structs.Node{{ID: "n1", Name: "hv1", MonitorState: structs.MonitorUnreachable}, {ID: "n2", Name: "hv2", MonitorState: structs.MonitorNormal},
		{ID: "n3", Name: "hv3", MonitorState: structs.MonitorError, Faults: []string{"disk"}}}
	now := time.Now()
	first := Derive(n, nil, now)
	second := Derive(n, nil, now)
	if len(first) != 2 {
		t.Fatalf("%d alarms, want 2 (unreachable and error)", len(first))
	}
	hex16 := regexp.MustCompile(`^[0-9a-f]{16}$`)
	for i := range first {
		if first[i].Fingerprint != second[i].Fingerprint || !hex16.MatchString(first[i].Fingerprint) {
			t.Fatalf("fingerprint %q not stable 16-hex", first[i].Fingerprint)
		}
		for _, l := range []string{"alertname", "severity", "node"} {
			if first[i].Labels[l] == "" {
				t.Fatalf("alarm %s lacks label %s", first[i].Name, l)
			}
		}
	}
}

func TestFailedTaskAlarmResolves(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	nodes := []structs.Node{{ID: "n1", Name: "hv1", MonitorState: structs.MonitorNormal}}
	failed := structs.Task{ID: "t1", Kind: structs.TaskEvacuate, NodeID: "n1", State: structs.TaskFailed, CreateIndex: 5, Updated: now.Add(-time.Hour)}
	later := structs.Task{ID: "t2", Kind: structs.TaskEvacuate, NodeID: "n1", State: structs.TaskSucceeded, CreateIndex: 9, Updated: now}
	if al := Derive(nodes, []structs.Task{failed}, now); len(al) != 1 || al[0].Labels["node"] != "hv1" {
		t.Fatalf("failed task: %+v, want one TaskFailed labelled with the node name", al)
	}
	if al := Derive(nodes, []structs.Task{failed, later}, now); len(al) != 0 {
		t.Fatalf("failed task superseded by a success still fires: %+v", al)
	}
	if al := Derive(nodes, []structs.Task{failed}, now.Add(25*time.Hour)); len(al) != 0 {
		t.Fatalf("day-old failed task still fires: %+v", al)
	}
}

func TestDeriveHeld(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	nodes := []structs.Node{{ID: "n1", Name: "hv1"}, {ID: "n2", Name: "hv2"}}
	held := structs.VM{ID: "v1", Name: "web", NodeID: "n1", Migration: &structs.Migration{TaskID: "t1", From: "n1", To: "n2", Generation: 4,
		Outcome: structs.MigrationOutcomeUnknown, UnknownReason: "no result"}}
	inFlight := structs.VM{ID: "v2", Name: "db", NodeID: "n1", Migration: &structs.Migration{TaskID: "t2", From: "n1", To: "n2", Generation: 5}}
	fp := ""
	if al := DeriveHeld([]structs.VM{held}, nodes, map[string]time.Time{heldKey(held): now.Add(-HeldAlarmAfter)}, nil, now); len(al) == 1 {
		fp = al[0].Fingerprint
	}
	tests := []struct {
		name   string
		vms    []structs.VM
		since  time.Duration // how long this leader has seen it held
		firing bool          // its alarm is recorded firing already
		want   int
	}{
		{"held for less than the bound", []structs.VM{held}, HeldAlarmAfter - time.Second, false, 0},
		{"held for the bound", []structs.VM{held}, HeldAlarmAfter, false, 1},
		{"new leader, alarm already firing: stays firing", []structs.VM{held}, 0, true, 1},
		{"migration in flight, not held", []structs.VM{inFlight}, time.Hour, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			since := map[string]time.Time{}
			for _, v := range tt.vms {
				if v.Held() {
					since[heldKey(v)] = now.Add(-tt.since)
				}
			}
			al := DeriveHeld(tt.vms, nodes, since, map[string]bool{fp: tt.firing}, now)
			if len(al) != tt.want {
				t.Fatalf("alarms = %+v, want %d", al, tt.want)
			}
			if tt.want == 1 && (al[0].Name != "VMHeld" || al[0].Labels["node"] != "hv1" || al[0].Labels["to"] != "hv2" || al[0].Labels["vm"] != "web") {
				t.Fatalf("alarm = %+v", al[0])
			}
		})
	}
	if fp == "" {
		t.Fatal("no fingerprint for the held alarm")
	}
}

// TestIdentityConflictAlarm: a node another agent claims has a critical
// NodeIdentityConflict alarm that names it, until its last evidence is
// IdentityConflictAlarmFor old.
func TestIdentityConflictAlarm(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		node  structs.Node
		fires bool
	}{
		{"no conflict", structs.Node{ID: "n1", Name: "hv1"}, false},
		{"fresh conflict", structs.Node{ID: "n1", Name: "hv1", IdentityConflict: "the agent at 10.0.0.9:4660 answered as node x", IdentityConflictAt: now.Add(-time.Minute)}, true},
		{"conflict nearly expired", structs.Node{ID: "n1", Name: "hv1", IdentityConflict: "x", IdentityConflictAt: now.Add(-IdentityConflictAlarmFor + time.Second)}, true},
		{"conflict expired", structs.Node{ID: "n1", Name: "hv1", IdentityConflict: "x", IdentityConflictAt: now.Add(-IdentityConflictAlarmFor)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []structs.Alarm
			for _, al := range Derive([]structs.Node{tc.node}, nil, now) {
				if al.Name == "NodeIdentityConflict" {
					got = append(got, al)
				}
			}
			if (len(got) == 1) != tc.fires || len(got) > 1 {
				t.Fatalf("NodeIdentityConflict alarms %+v; want firing %v", got, tc.fires)
			}
			if tc.fires {
				al := got[0]
				if al.Severity != "critical" || al.Labels["node"] != "hv1" || al.Labels["node_id"] != "n1" ||
					!al.StartsAt.Equal(tc.node.IdentityConflictAt) || !regexp.MustCompile(regexp.QuoteMeta(tc.node.IdentityConflict)).MatchString(al.Description) {
					t.Fatalf("alarm = %+v", al)
				}
			}
		})
	}
}

// TestUniquenessConflictAlarm: every stale copy a node's heartbeat
// recorded is a critical UniquenessConflict naming both nodes, stable
// while it lasts (a running copy that the agent then destroys is the same
// alarm), and gone once the node's conflicts are.
func TestUniquenessConflictAlarm(t *testing.T) {
	since := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	const vm = "7dc969aa-0000-4000-8000-000000000001"
	running := structs.StaleCopy{VMID: vm, Generation: 4, PlacedOn: "n2", PlacedGeneration: 17, Since: since}
	destroyed := running
	destroyed.Destroyed = true
	tests := []struct {
		name      string
		copies    []structs.StaleCopy
		wantCount int
		wantText  string // in the summary
	}{
		{"none", nil, 0, ""},
		{"running stale copy", []structs.StaleCopy{running}, 1, "runs on node hv1 as well as on hv2"},
		{"destroyed stale copy", []structs.StaleCopy{destroyed}, 1, "until its agent destroyed it"},
		{"placed nowhere", []structs.StaleCopy{{VMID: vm, Generation: 4, Since: since}}, 1, "as well as on none"},
	}
	var fp string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := []structs.Node{{ID: "n1", Name: "hv1", MonitorState: structs.MonitorNormal, StaleCopies: tt.copies},
				{ID: "n2", Name: "hv2", MonitorState: structs.MonitorNormal}}
			var got []structs.Alarm
			for _, al := range Derive(nodes, nil, since) {
				if al.Name == "UniquenessConflict" {
					got = append(got, al)
				}
			}
			if len(got) != tt.wantCount {
				t.Fatalf("%d UniquenessConflict alarms, want %d: %+v", len(got), tt.wantCount, got)
			}
			if tt.wantCount == 0 {
				return
			}
			al := got[0]
			if al.Severity != "critical" || al.Labels["node"] != "hv1" || al.Labels["vm"] != vm || !al.StartsAt.Equal(since) ||
				!strings.Contains(al.Summary, tt.wantText) {
				t.Fatalf("alarm %+v: want critical, node hv1, vm %s, since %v, summary with %q", al, vm, since, tt.wantText)
			}
			if tt.copies[0].PlacedOn == "n2" {
				if al.Labels["other_node"] != "hv2" || al.Labels["other_node_id"] != "n2" {
					t.Fatalf("labels %v: want other_node hv2 (n2)", al.Labels)
				}
				// Running, then destroyed: one alarm, one fingerprint.
				if fp != "" && al.Fingerprint != fp {
					t.Fatalf("fingerprint %s changed from %s when the copy was destroyed", al.Fingerprint, fp)
				}
				fp = al.Fingerprint
			}
		})
	}
}
