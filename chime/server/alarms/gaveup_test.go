package alarms

import (
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

func TestDeriveGaveUp(t *testing.T) {
	at := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	down := structs.Node{ID: "n1", Name: "hv1", MonitorState: structs.MonitorUnreachable}
	back := structs.Node{ID: "n1", Name: "hv1", MonitorState: structs.MonitorNormal}
	other := structs.Node{ID: "n2", Name: "hv2", MonitorState: structs.MonitorNormal}
	onDown := structs.VM{ID: "v1", Name: "web", NodeID: "n1"}
	moved := structs.VM{ID: "v1", Name: "web", NodeID: "n2"}
	ev := func(kind, node, vm string) structs.Event {
		return structs.Event{Kind: kind, NodeID: node, VMID: vm, Time: at, Message: kind}
	}
	tests := []struct {
		name   string
		nodes  []structs.Node
		vms    []structs.VM
		events []structs.Event
		want   []string // alarm names, sorted by fingerprint order irrelevant: counted
	}{
		{"nothing", []structs.Node{down, other}, []structs.VM{onDown}, nil, nil},
		{"ha gave up, node still down", []structs.Node{down, other}, []structs.VM{onDown},
			[]structs.Event{ev(eventHAGaveUp, "n1", "v1")}, []string{"HAGaveUp"}},
		{"ha gave up, then restarted", []structs.Node{down, other}, []structs.VM{onDown},
			[]structs.Event{ev(eventHAGaveUp, "n1", "v1"), ev(eventHARestarted, "n2", "v1")}, nil},
		{"restarted, then gave up again", []structs.Node{down, other}, []structs.VM{onDown},
			[]structs.Event{ev(eventHARestarted, "n1", "v1"), ev(eventHAGaveUp, "n1", "v1")}, []string{"HAGaveUp"}},
		{"ha gave up, node returned", []structs.Node{back, other}, []structs.VM{onDown},
			[]structs.Event{ev(eventHAGaveUp, "n1", "v1")}, nil},
		{"ha gave up, vm moved by an operator", []structs.Node{down, other}, []structs.VM{moved},
			[]structs.Event{ev(eventHAGaveUp, "n1", "v1")}, nil},
		{"ha gave up, vm deleted", []structs.Node{down, other}, nil,
			[]structs.Event{ev(eventHAGaveUp, "n1", "v1")}, nil},
		{"fence gave up, node down", []structs.Node{down, other}, nil,
			[]structs.Event{ev(eventFenceGaveUp, "n1", "")}, []string{"FenceGaveUp"}},
		{"fence gave up, then fenced on demand", []structs.Node{down, other}, nil,
			[]structs.Event{ev(eventFenceGaveUp, "n1", ""), ev(eventFenceOK, "n1", "")}, nil},
		{"fence gave up, node returned", []structs.Node{back, other}, nil,
			[]structs.Event{ev(eventFenceGaveUp, "n1", "")}, nil},
		{"both", []structs.Node{down, other}, []structs.VM{onDown},
			[]structs.Event{ev(eventFenceGaveUp, "n1", ""), ev(eventHAGaveUp, "n1", "v1")}, []string{"FenceGaveUp", "HAGaveUp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DeriveGaveUp(tt.nodes, tt.vms, tt.events)
			again := DeriveGaveUp(tt.nodes, tt.vms, tt.events)
			count := map[string]int{}
			for i, al := range got {
				count[al.Name]++
				if al.Fingerprint != again[i].Fingerprint || al.Severity != "critical" || al.Labels["node"] != "hv1" || !al.StartsAt.Equal(at) {
					t.Errorf("alarm %+v: want a stable fingerprint, critical, node hv1, since the event", al)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("alarms %v, want %v", count, tt.want)
			}
			for _, w := range tt.want {
				if count[w] != 1 {
					t.Fatalf("alarms %v, want %v", count, tt.want)
				}
			}
		})
	}
}
