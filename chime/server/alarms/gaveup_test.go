package alarms

import (
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/server/recovery"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
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

// TestFenceGaveUpThroughTheAlarmer: the alarmer reads the real FSM's
// event log; a fence.gave_up of an unreachable node fires FenceGaveUp
// once, a later fence.succeeded resolves it.
func TestFenceGaveUpThroughTheAlarmer(t *testing.T) {
	w := newWorld(t)
	node := w.RegisterNode("hv1")
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: node, State: structs.MonitorUnreachable, Reason: "test"})
	w.Propose(fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: eventFenceGaveUp, NodeID: node, Message: "fence failed 3 times"}})
	w.step()
	w.step()
	names := func() map[string]bool {
		firing, err := w.alarmer.Firing()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, al := range firing {
			out[al.Name] = true
		}
		return out
	}
	if got := names(); !got["FenceGaveUp"] || !got["NodeUnreachable"] {
		t.Fatalf("firing %v, want FenceGaveUp and NodeUnreachable", got)
	}
	w.Propose(fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: eventFenceOK, NodeID: node, Message: "fenced on demand"}})
	w.step()
	if got := names(); got["FenceGaveUp"] || !got["NodeUnreachable"] {
		t.Fatalf("firing %v after fence.succeeded, want only NodeUnreachable", got)
	}
}

// TestGaveUpEventKindsMatchRecovery: the kinds read here are the ones the
// recovery duty records.
func TestGaveUpEventKindsMatchRecovery(t *testing.T) {
	for _, k := range [][2]string{{eventHAGaveUp, recovery.EventGaveUp}, {eventHARestarted, recovery.EventRestarted},
		{eventFenceGaveUp, recovery.EventFenceGaveUp}, {eventFenceOK, recovery.EventFenceOK}} {
		if k[0] != k[1] {
			t.Errorf("alarms reads %q, recovery records %q", k[0], k[1])
		}
	}
}
