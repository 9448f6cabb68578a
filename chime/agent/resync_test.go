package agent

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// TestResyncBeforeHealthyHeartbeat: an agent that lost the servers and had
// no successful desired-state sync for a heartbeat interval syncs and runs
// a reconcile pass before its next heartbeat, so that the heartbeat lists
// libvirt after the stale copies were destroyed, and reports the copies it
// destroyed (uniqueness rule 9); when that sync fails the heartbeat says
// so with a fault. Short blips and healthy silences cost no extra sync.
func TestResyncBeforeHealthyHeartbeat(t *testing.T) {
	tests := []struct {
		name string
		// outage runs between the first heartbeat and the one checked: the
		// servers' reachability and the time that passes.
		lost       bool          // a request fails during the outage
		outage     time.Duration // time between the failure and the checked heartbeat
		rebuilt    bool          // A is re-placed elsewhere meanwhile
		noDesired  bool          // desired-state queries still fail at the checked heartbeat
		wantCalls  []string      // the calls of the checked heartbeat, in order
		wantFault  bool          // the heartbeat carries faultNotSynced
		wantListed bool          // A is listed running in the heartbeat
		wantDestr  bool          // A is reported destroyed
	}{
		{"partition over an interval: sync, destroy, then the heartbeat", true, 10 * time.Second, true, false,
			[]string{"server:desired", "hv:destroy " + idA, "hv:undefine " + idA, "server:heartbeat"}, false, false, true},
		{"partition over an interval, nothing moved: sync, then the heartbeat", true, 10 * time.Second, false, false,
			[]string{"server:desired", "server:heartbeat"}, false, true, false},
		{"desired state still unreachable: the heartbeat says not synced", true, 10 * time.Second, true, true,
			[]string{"server:desired", "server:heartbeat"}, true, true, false},
		{"blip within an interval of the last sync: no extra sync", true, time.Second, true, false,
			[]string{"server:heartbeat"}, false, true, false},
		{"long silence with no failure (a blocking query waiting): no extra sync", false, time.Minute, true, false,
			[]string{"server:heartbeat"}, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := newStepped(t, 1, []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 7)})
			a := s.a
			if err := a.RegisterOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := a.ReconcileOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.HeartbeatOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if tt.lost {
				s.srv.setDown(true)
				if err := a.HeartbeatOnce(ctx); err == nil {
					t.Fatal("heartbeat with the servers down succeeded")
				}
				s.srv.setDown(false)
			}
			if tt.rebuilt {
				s.srv.setDesired() // A rebuilt on another node while this one was away
			}
			s.srv.mu.Lock()
			s.srv.noDesired = tt.noDesired
			s.srv.mu.Unlock()
			s.clk.Advance(tt.outage)
			mark := len(s.log.snapshot())
			if err := a.HeartbeatOnce(ctx); err != nil {
				t.Fatalf("heartbeat after the outage: %v", err)
			}
			var calls []string
			for _, e := range s.log.snapshot()[mark:] {
				kind, rest, _ := strings.Cut(e, " ")
				if strings.HasPrefix(kind, "hv:") && kind != "hv:list" {
					calls = append(calls, kind+" "+strings.Fields(rest)[0])
				} else if strings.HasPrefix(kind, "server:") {
					calls = append(calls, kind)
				}
			}
			if !slices.Equal(calls, tt.wantCalls) {
				t.Fatalf("calls %q, want %q", calls, tt.wantCalls)
			}
			hb := s.srv.lastHeartbeat()
			if got := slices.Contains(hb.Faults, faultNotSynced); got != tt.wantFault {
				t.Fatalf("faults %v: not-synced fault %v, want %v", hb.Faults, got, tt.wantFault)
			}
			listed := slices.ContainsFunc(hb.VMs, func(o structs.VMObservation) bool { return o.VMID == idA && o.State == structs.StateRunning })
			if listed != tt.wantListed {
				t.Fatalf("heartbeat VMs %+v: A listed running %v, want %v", hb.VMs, listed, tt.wantListed)
			}
			destroyed := slices.ContainsFunc(hb.StaleDestroyed, func(o structs.VMObservation) bool { return o.VMID == idA && o.Generation == 7 })
			if destroyed != tt.wantDestr {
				t.Fatalf("stale_destroyed %+v: A %v, want %v", hb.StaleDestroyed, destroyed, tt.wantDestr)
			}
			if tt.wantDestr {
				if st, ok := s.hv.state(idA); ok && st == hypervisor.StateRunning {
					t.Fatal("the stale copy still runs")
				}
				// Reported once: the next heartbeat no longer carries it.
				if err := a.HeartbeatOnce(ctx); err != nil {
					t.Fatal(err)
				}
				if hb := s.srv.lastHeartbeat(); len(hb.StaleDestroyed) != 0 {
					t.Fatalf("destroyed copies reported again: %+v", hb.StaleDestroyed)
				}
			}
		})
	}
}
