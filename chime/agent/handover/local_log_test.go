package handover

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// TestLocalMigrationLogsTheOutcome: every node-local migration that was
// announced leaves a log entry for the servers with the destination's node
// id and libvirt's outcome (uniqueness rule 7): succeeded (retired),
// failed with the domain still here (not retired: the servers release the
// destination's announcement), unknown when the call failed and the domain
// is gone (retired: it never starts here again). A destination that names
// no node (an older agent) gives an entry without outcome; a destination
// that is this node migrates nothing.
func TestLocalMigrationLogsTheOutcome(t *testing.T) {
	lo := MigrateRequest{Interface: "lo", UUID: idA, Dest: "127.0.0.2"}
	const dest = "node-2"
	cases := []struct {
		name    string
		toNode  string
		migrate func(hv *fakeHV) func(id string) error
		ok      bool
		retired bool
		want    []structs.LocalMigration
	}{
		{"succeeded", dest, nil, true, true,
			[]structs.LocalMigration{{VMID: idA, ToAddr: "127.0.0.2", Generation: 10, FromNode: "node-1", ToNode: dest, Outcome: structs.LocalMigrationSucceeded}}},
		{"failed, the domain still here", dest,
			func(*fakeHV) func(string) error { return func(string) error { return errors.New("migration refused") } },
			false, false,
			[]structs.LocalMigration{{VMID: idA, ToAddr: "127.0.0.2", Generation: 10, FromNode: "node-1", ToNode: dest, Outcome: structs.LocalMigrationFailed}}},
		{"failed, the domain gone: unknown", dest,
			func(hv *fakeHV) func(string) error {
				return func(id string) error { hv.leave(id); return errors.New("connection reset") }
			},
			true, true,
			[]structs.LocalMigration{{VMID: idA, ToAddr: "127.0.0.2", Generation: 10, FromNode: "node-1", ToNode: dest, Outcome: structs.LocalMigrationUnknown}}},
		{"destination names no node: an entry without outcome", "", nil, true, true,
			[]structs.LocalMigration{{VMID: idA, ToAddr: "127.0.0.2", Generation: 10}}},
		{"destination is this node: nothing", "node-1", nil, false, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			hv := newFakeHV(running(idA, 10))
			if tc.migrate != nil {
				hv.migrate = tc.migrate(hv)
			}
			r := newRig(t, st, hv)
			r.ann.toNode = tc.toNode
			res, err := r.m.Migrate(context.Background(), lo)
			if err != nil || len(res) != 1 || res[0].OK != tc.ok {
				t.Fatalf("migrate = %+v, %v; want ok %v", res, err, tc.ok)
			}
			logged, _, err := st.PendingMigrations()
			if err != nil || !slices.Equal(logged, tc.want) {
				t.Fatalf("logged %+v (%v), want %+v", logged, err, tc.want)
			}
			ret, _ := st.Retired()
			if (ret[idA] == 10) != tc.retired {
				t.Fatalf("retired %v, want retired %v", ret, tc.retired)
			}
			if open, _ := st.Handovers(); len(open) != 0 {
				t.Fatalf("open hand-overs %v", open)
			}
		})
	}
}

// TestAnnouncedAdoptionsExpire: an announced adoption holds its VM only
// while the VM is placed elsewhere (root cause 5): once the servers place
// it here at the announced generation or a newer one without adopting it,
// it holds nothing and is forgotten; an adoption whose domain has not
// arrived within AdoptionBound expires (holds nothing, reported until the
// servers acknowledge it); one from this node itself is refused.
func TestAnnouncedAdoptionsExpire(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	ad := store.Adoption{VMID: idA, Name: "a", Generation: 10, FromNode: "node-0"}
	elsewhere := api.DesiredState{VMs: []api.DesiredVM{}, Index: 5}
	cases := []struct {
		name      string
		desired   api.DesiredState
		wait      time.Duration
		here      bool // the domain arrived
		held      bool
		forgotten bool // the record is gone after AfterDesired
		expired   bool // ExpireAdoptions reports it
	}{
		{"placed elsewhere, just announced: held", elsewhere, time.Minute, false, true, false, false},
		{"placed here anew by a rebuild: not held, forgotten", desiredHere(idA, 20, false), time.Minute, false, false, true, false},
		{"placed here at the announced generation: not held, forgotten", desiredHere(idA, 10, false), time.Minute, false, false, true, false},
		{"never arrived within the bound: expired", elsewhere, AdoptionBound + time.Second, false, false, false, true},
		{"arrived (listed), past the bound: not expired", elsewhere, AdoptionBound + time.Second, true, true, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			clk := clock.NewManual(t0)
			r := newRigOn(t, st, newFakeHV(), clk, time.Second)
			if err := r.m.Adopt(ad); err != nil {
				t.Fatal(err)
			}
			clk.Advance(tc.wait)
			exp, err := r.m.ExpireAdoptions(map[string]bool{idA: tc.here})
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(exp, structs.AdoptionRef{VMID: idA, Generation: 10}); got != tc.expired {
				t.Fatalf("expired %v, want %v", exp, tc.expired)
			}
			r.m.AfterDesired(context.Background(), tc.desired)
			hold, err := r.m.Hold(tc.desired)
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(hold, idA); got != tc.held {
				t.Fatalf("held %v (%v), want %v", got, hold, tc.held)
			}
			ads, _ := st.Adoptions()
			if _, kept := ads[idA]; kept == tc.forgotten {
				t.Fatalf("record kept %v, want forgotten %v", kept, tc.forgotten)
			}
			if tc.expired {
				r.m.DropAdoptions([]string{idA}) // the servers acknowledged the expiry
				if ads, _ := st.Adoptions(); len(ads) != 0 {
					t.Fatalf("records after the acknowledgement: %v", ads)
				}
			}
		})
	}
	t.Run("from this node itself: refused", func(t *testing.T) {
		r := newRig(t, openStore(t), newFakeHV())
		self := ad
		self.FromNode = "node-1"
		if err := r.m.Adopt(self); !errors.Is(err, structs.ErrConflict) {
			t.Fatalf("adopt from itself = %v, want a conflict", err)
		}
	})
}
