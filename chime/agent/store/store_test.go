package store

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/agent/agenttest"
	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/hypervisor"
)

const (
	idA = agenttest.IDA
	idB = agenttest.IDB
	idC = agenttest.IDC
)

var (
	dvm = agenttest.DesiredVM
)

func TestStoreRoundTripAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Identity(hostA)
	if err != nil || id == "" {
		t.Fatalf("Identity = %q, %v", id, err)
	}
	if again, _ := s.Identity(hostA); again != id {
		t.Fatalf("node id changed within one open: %q then %q", id, again)
	}
	if err := s.SetSecret("s3cret"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDrained(true); err != nil {
		t.Fatal(err)
	}
	ds := api.DesiredState{NodeID: id, Index: 77, VMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)}}
	if _, refused, _, err := s.AcceptDesired(ds); err != nil || len(refused) != 0 {
		t.Fatalf("AcceptDesired: refused %v, err %v", refused, err)
	}
	spec := hypervisor.DomainSpec{VMID: idA, Name: "a", VCPUs: 1, MemoryMiB: 64, Disks: []string{"/srv/a.qcow2"}, Generation: 10}
	if err := s.SetDefined(spec); err != nil {
		t.Fatal(err)
	}
	migs := []structs.LocalMigration{{VMID: idA, ToAddr: "10.0.0.2", Generation: 10}, {VMID: idB, ToAddr: "10.0.0.3", Generation: 20}}
	for _, m := range migs {
		if err := s.AddMigration(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Identity(hostA); got != id {
		t.Errorf("node id after reopen = %q, want %q", got, id)
	}
	if got, _ := s.Secret(); got != "s3cret" {
		t.Errorf("secret after reopen = %q", got)
	}
	if got, _ := s.Drained(); !got {
		t.Errorf("drain flag lost on reopen")
	}
	got, err := s.Desired()
	if err != nil || got == nil || !reflect.DeepEqual(*got, ds) {
		t.Errorf("desired after reopen = %+v, %v; want %+v", got, err, ds)
	}
	if g, _ := s.SeenGeneration(idA); g != 10 {
		t.Errorf("seen generation = %d, want 10", g)
	}
	defs, err := s.DefinedSpecs()
	if err != nil || !reflect.DeepEqual(defs, map[string]hypervisor.DomainSpec{idA: spec}) {
		t.Errorf("defined specs = %+v, %v", defs, err)
	}
	pending, last, err := s.PendingMigrations()
	if err != nil || !reflect.DeepEqual(pending, migs) {
		t.Fatalf("pending migrations = %+v, %v; want %+v", pending, err, migs)
	}
	// A migration logged after the heartbeat was built must survive the ack.
	late := structs.LocalMigration{VMID: idC, ToAddr: "10.0.0.4", Generation: 30}
	if err := s.AddMigration(late); err != nil {
		t.Fatal(err)
	}
	if err := s.AckMigrations(last); err != nil {
		t.Fatal(err)
	}
	if pending, _, _ := s.PendingMigrations(); !reflect.DeepEqual(pending, []structs.LocalMigration{late}) {
		t.Errorf("after ack: %+v, want only the late one", pending)
	}
	if err := s.ForgetDefined(idA); err != nil {
		t.Fatal(err)
	}
	if defs, _ := s.DefinedSpecs(); len(defs) != 0 {
		t.Errorf("defined after forget = %+v", defs)
	}
}

func TestStoreRefusesSecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := Open(path); err == nil {
		s2.Close()
		t.Fatal("a second agent opened the same state file")
	}
}

func TestAcceptDesiredFencing(t *testing.T) {
	tests := []struct {
		name        string
		first       []api.DesiredVM
		second      []api.DesiredVM
		wantVMs     []api.DesiredVM
		wantRefused int
		wantHold    []string
	}{
		{name: "newer generation accepted",
			first:   []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)},
			second:  []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 11)},
			wantVMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 11)}},
		{name: "same generation accepted (desired state change)",
			first:   []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)},
			second:  []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 10)},
			wantVMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 10)}},
		{name: "older generation refused, previous entry kept",
			first:       []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)},
			second:      []api.DesiredVM{dvm(idA, "a", structs.DesiredStopped, 9)},
			wantVMs:     []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)},
			wantRefused: 1},
		{name: "vm moved away is dropped",
			first:       []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)},
			second:      nil,
			wantVMs:     []api.DesiredVM{},
			wantRefused: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(filepath.Join(t.TempDir(), "agent.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, _, _, err := s.AcceptDesired(api.DesiredState{Index: 1, VMs: tt.first}); err != nil {
				t.Fatal(err)
			}
			got, refused, hold, err := s.AcceptDesired(api.DesiredState{Index: 2, VMs: tt.second})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.VMs, tt.wantVMs) || len(refused) != tt.wantRefused || !reflect.DeepEqual(hold, tt.wantHold) {
				t.Errorf("accepted %+v refused %d hold %v; want %+v, %d, %v", got.VMs, len(refused), hold, tt.wantVMs, tt.wantRefused, tt.wantHold)
			}
		})
	}

	// The held case: VM seen at 10, moved away (gone), then an old
	// instruction at 9 arrives: refused and held, not run.
	s, err := Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, _, _, _ = s.AcceptDesired(api.DesiredState{Index: 1, VMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 10)}})
	_, _, _, _ = s.AcceptDesired(api.DesiredState{Index: 2})
	got, refused, hold, err := s.AcceptDesired(api.DesiredState{Index: 3, VMs: []api.DesiredVM{dvm(idA, "a", structs.DesiredRunning, 9)}})
	if err != nil || len(got.VMs) != 0 || len(refused) != 1 || !reflect.DeepEqual(hold, []string{idA}) {
		t.Fatalf("old instruction after move: accepted %+v refused %v hold %v err %v", got.VMs, refused, hold, err)
	}
}

const (
	hostA = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	hostB = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
	oldID = "16fd2706-8baf-433b-82eb-8c7fada847da"
)

// TestIdentity: the node id is the host UUID on first use, the same after a
// lost state (a fresh store on the same host), kept for a state of an older
// agent (random id), and refused for a state written on another host.
func TestIdentity(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stored  string // node id already in the store ("" none)
		host    string // host uuid recorded before (with stored; "" none: an older agent)
		current string // libvirt's host uuid now
		want    string
		wantErr error  // errors.Is
		errHas  string // when wantErr is nil
	}{
		{name: "new data dir", current: hostA, want: hostA},
		{name: "lost data dir, same host", current: hostA, want: hostA},
		{name: "kept data dir", stored: hostA, host: hostA, current: hostA, want: hostA},
		{name: "older agent's random id kept", stored: oldID, current: hostA, want: oldID},
		{name: "libvirt cannot tell, kept id", stored: hostA, host: hostA, current: "", want: hostA},
		{name: "data dir of another host", stored: hostB, host: hostB, current: hostA, wantErr: ErrOtherHost},
		{name: "new data dir, libvirt cannot tell", current: "", errHas: "needs libvirt's host UUID"},
		{name: "new data dir, malformed host uuid", current: "nope", errHas: `host uuid "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(filepath.Join(t.TempDir(), "agent.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if tc.stored != "" {
				if tc.host != "" {
					if _, err := s.Identity(tc.host); err != nil {
						t.Fatal(err)
					}
				}
				if err := s.SetNodeID(tc.stored); err != nil {
					t.Fatal(err)
				}
			}
			got, err := s.Identity(tc.current)
			switch {
			case tc.wantErr != nil || tc.errHas != "":
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("Identity(%q) = %q, %v; want error %v %q", tc.current, got, err, tc.wantErr, tc.errHas)
				}
				return
			case err != nil || got != tc.want:
				t.Fatalf("Identity(%q) = %q, %v; want %q", tc.current, got, err, tc.want)
			}
			// Kept: a second call, even with libvirt silent, answers the same.
			if again, err := s.Identity(""); err != nil || again != tc.want {
				t.Fatalf("second Identity = %q, %v; want %q", again, err, tc.want)
			}
			// An older agent's state gets the host recorded: another host is refused now.
			if _, err := s.Identity(hostB); tc.current != "" && !errors.Is(err, ErrOtherHost) {
				t.Fatalf("Identity(another host) after %q: err = %v, want ErrOtherHost", tc.current, err)
			}
		})
	}
}
