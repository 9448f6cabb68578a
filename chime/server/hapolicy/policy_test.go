package hapolicy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// fleet returns n nodes of which the first down are unreachable and the
// next drained are drained (and reachable).
func fleet(n, down, drained int) []structs.Node {
	var out []structs.Node
	for i := range n {
		nd := structs.Node{ID: fmt.Sprintf("n%d", i), Name: fmt.Sprintf("n%d", i),
			ManagementState: structs.NodeEnabled, MonitorState: structs.MonitorNormal}
		if i < down {
			nd.MonitorState = structs.MonitorUnreachable
		} else if i < down+drained {
			nd.ManagementState = structs.NodeDrained
		}
		out = append(out, nd)
	}
	return out
}

func TestArmedAndNext(t *testing.T) {
	engaged := structs.HAState{Brake: true, BrakeUnreachable: 6, BrakeNodes: 10}
	cases := []struct {
		name      string
		ha        structs.HAState
		nodes     []structs.Node
		share     float64
		wantArmed bool
		wantWhy   string // substring of the reason
		wantNext  string // "", "engage", "release", "reset-ack"
	}{
		{"healthy", structs.HAState{}, fleet(10, 0, 0), 0.5, true, "armed", ""},
		{"one node down", structs.HAState{}, fleet(10, 1, 0), 0.5, true, "armed", ""},
		{"exactly half is not more than half", structs.HAState{}, fleet(10, 5, 0), 0.5, true, "armed", ""},
		{"more than half engages", structs.HAState{}, fleet(10, 6, 0), 0.5, false, "mass failure: 6 of 10", "engage"},
		{"two of three", structs.HAState{}, fleet(3, 2, 0), 0.5, false, "mass failure", "engage"},
		{"one of two is half", structs.HAState{}, fleet(2, 1, 0), 0.5, true, "armed", ""},
		{"drained nodes are not counted", structs.HAState{}, fleet(10, 4, 4), 0.5, false, "4 of 6", "engage"},
		{"share 1 never engages", structs.HAState{}, fleet(4, 4, 0), 1, true, "armed", ""},
		{"a low share engages early", structs.HAState{}, fleet(10, 2, 0), 0.1, false, "more than 10%", "engage"},
		{"no nodes", structs.HAState{}, nil, 0.5, true, "armed", ""},
		{"latched: holds inside the band", engaged, fleet(10, 3, 0), 0.5, false, "brake is engaged", ""},
		{"latched: releases at half the share", engaged, fleet(10, 2, 0), 0.5, false, "brake is engaged", "release"},
		{"latched: releases when all are back", engaged, fleet(10, 0, 0), 0.5, false, "brake", "release"},
		{"disarmed wins", structs.HAState{Disarmed: true, DisarmReason: "upgrade"}, fleet(10, 0, 0), 0.5, false, "disarmed by an operator: upgrade", ""},
		{"disarmed still latches the brake", structs.HAState{Disarmed: true}, fleet(10, 7, 0), 0.5, false, "disarmed", "engage"},
		{"acknowledged by an arm", structs.HAState{AckUnreachable: 6}, fleet(10, 6, 0), 0.5, true, "armed", ""},
		{"more than acknowledged engages", structs.HAState{AckUnreachable: 6}, fleet(10, 7, 0), 0.5, false, "7 of 10", "engage"},
		{"ack forgotten once back", structs.HAState{AckUnreachable: 6}, fleet(10, 1, 0), 0.5, true, "armed", "reset-ack"},
		{"ack kept inside the band", structs.HAState{AckUnreachable: 6}, fleet(10, 4, 0), 0.5, true, "armed", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			armed, why := Armed(tc.ha, tc.nodes, tc.share)
			if armed != tc.wantArmed || !strings.Contains(why, tc.wantWhy) {
				t.Fatalf("Armed = %v %q, want %v containing %q", armed, why, tc.wantArmed, tc.wantWhy)
			}
			next := Next(tc.ha, tc.nodes, tc.share)
			got := ""
			switch {
			case next == nil:
			case next.Engaged:
				got = "engage"
			case tc.ha.Brake:
				got = "release"
			case next.ResetAck:
				got = "reset-ack"
			default:
				got = fmt.Sprintf("%+v", *next)
			}
			if got != tc.wantNext {
				t.Fatalf("Next = %q (%+v), want %q", got, next, tc.wantNext)
			}
		})
	}
}

func TestValidateShare(t *testing.T) {
	for _, s := range []float64{0.01, 0.5, 1} {
		if err := ValidateShare(s); err != nil {
			t.Errorf("%v: %v", s, err)
		}
	}
	for _, s := range []float64{0, -0.5, 1.01} {
		if err := ValidateShare(s); err == nil || !strings.Contains(err.Error(), "ha_brake_share") {
			t.Errorf("%v: %v, want a refusal naming ha_brake_share", s, err)
		}
	}
}

func TestAlarms(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	broken := structs.HAReservation{Tolerate: 1, Rule: "ha-tolerate-failures", Reason: "1 of 2 protected VMs could not be restarted"}
	cases := []struct {
		name string
		ha   structs.HAState
		res  structs.HAReservation
		want []string
	}{
		{"quiet", structs.HAState{}, structs.HAReservation{OK: true}, nil},
		{"brake", structs.HAState{Brake: true, BrakeSince: now}, structs.HAReservation{OK: true}, []string{"HABrakeEngaged"}},
		{"disarmed and broken", structs.HAState{Disarmed: true}, broken, []string{"HADisarmed", "HAReservationBroken"}},
		{"admission control off", structs.HAState{}, structs.HAReservation{Tolerate: 0, Reason: "x"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, al := range Alarms(tc.ha, tc.res, now) {
				got = append(got, al.Name)
				if al.Summary == "" || al.Description == "" || al.Labels["scope"] != "cluster" {
					t.Errorf("alarm %+v", al)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("alarms %v, want %v", got, tc.want)
			}
		})
	}
}
