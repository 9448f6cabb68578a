package api

import (
	"errors"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

func TestCreateVMRequestValidate(t *testing.T) {
	ok := CreateVMRequest{Name: "web-1", VCPUs: 2, Memory: 512}
	tests := []struct {
		name  string
		edit  func(r *CreateVMRequest)
		field string // "" = valid
	}{
		{"valid", func(r *CreateVMRequest) {}, ""},
		{"max vcpus", func(r *CreateVMRequest) { r.VCPUs = 256 }, ""},
		{"min memory", func(r *CreateVMRequest) { r.Memory = 16 }, ""},
		{"63-char name", func(r *CreateVMRequest) { r.Name = strings.Repeat("a", 63) }, ""},
		{"disks", func(r *CreateVMRequest) { r.Disks = []string{"/srv/a.img", "/srv/b.qcow2"} }, ""},
		{"empty name", func(r *CreateVMRequest) { r.Name = "" }, "name"},
		{"uppercase", func(r *CreateVMRequest) { r.Name = "Web" }, "name"},
		{"underscore", func(r *CreateVMRequest) { r.Name = "web_1" }, "name"},
		{"leading hyphen", func(r *CreateVMRequest) { r.Name = "-web" }, "name"},
		{"trailing hyphen", func(r *CreateVMRequest) { r.Name = "web-" }, "name"},
		{"64-char name", func(r *CreateVMRequest) { r.Name = strings.Repeat("a", 64) }, "name"},
		{"zero vcpus", func(r *CreateVMRequest) { r.VCPUs = 0 }, "vcpus"},
		{"257 vcpus", func(r *CreateVMRequest) { r.VCPUs = 257 }, "vcpus"},
		{"15 MiB", func(r *CreateVMRequest) { r.Memory = 15 }, "memory_mib"},
		{"relative disk", func(r *CreateVMRequest) { r.Disks = []string{"a.img"} }, "disks"},
		{"unclean disk", func(r *CreateVMRequest) { r.Disks = []string{"/srv/../etc/x"} }, "disks"},
		{"quote in disk", func(r *CreateVMRequest) { r.Disks = []string{"/srv/a'.img"} }, "disks"},
		{"same disk twice", func(r *CreateVMRequest) { r.Disks = []string{"/srv/a.img", "/srv/a.img"} }, "disks"},
		{"bad group", func(r *CreateVMRequest) { r.Group = "Group A" }, "anti_affinity"},
		{"empty label key", func(r *CreateVMRequest) { r.Labels = map[string]string{"": "x"} }, "labels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.edit(&r)
			err := r.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("valid request refused: %v", err)
				}
				return
			}
			e := AsError(err)
			if e.Field != tt.field || !errors.Is(err, structs.ErrInvalid) || StatusOf(err) != 400 {
				t.Fatalf("err = %v, want a 400 naming %q", err, tt.field)
			}
			if !strings.HasPrefix(e.Message, tt.field+":") {
				t.Fatalf("message %q does not start with the field", e.Message)
			}
		})
	}
}

func TestHeartbeatValidateChecksEveryItem(t *testing.T) {
	id, other := "6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b", "7c2f9f5e-2d2e-4f1f-8b68-1f2f3e4d5c6d"
	good := structs.VMObservation{VMID: id, State: structs.StateRunning}
	tests := []struct {
		name string
		hb   HeartbeatRequest
		ok   bool
	}{
		{"valid", HeartbeatRequest{NodeID: id, VMs: []structs.VMObservation{good}}, true},
		{"bad node id", HeartbeatRequest{NodeID: "x"}, false},
		{"bad second item", HeartbeatRequest{NodeID: id, VMs: []structs.VMObservation{good, {VMID: "nope", State: structs.StateRunning}}}, false},
		{"bad state", HeartbeatRequest{NodeID: id, VMs: []structs.VMObservation{{VMID: id, State: "flying"}}}, false},
		{"bad adopted item", HeartbeatRequest{NodeID: id, Adopted: []structs.VMObservation{{VMID: "x", State: structs.StateRunning}}}, false},
		{"too many faults", HeartbeatRequest{NodeID: id, Faults: make([]string, structs.MaxFaults+1)}, false},
		{"valid migration", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: id, ToAddr: "10.0.0.2:4660", Generation: 3}}}, true},
		{"bad migration item", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: "x"}}}, false},
		{"valid destroyed stale copy", HeartbeatRequest{NodeID: id, StaleDestroyed: []structs.VMObservation{{VMID: id, State: structs.StateRunning, Generation: 4}}}, true},
		{"bad destroyed stale copy", HeartbeatRequest{NodeID: id, StaleDestroyed: []structs.VMObservation{{VMID: "x"}}}, false},
		{"too many destroyed stale copies", HeartbeatRequest{NodeID: id, StaleDestroyed: make([]structs.VMObservation, structs.MaxObservedVMs+1)}, false},
		{"too many migrations", HeartbeatRequest{NodeID: id, Migrations: make([]structs.LocalMigration, structs.MaxObservedVMs+1)}, false},
		{"valid migration with outcome", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: id, Generation: 3, FromNode: id, ToNode: other, Outcome: structs.LocalMigrationSucceeded}}}, true},
		{"unknown outcome word", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: id, Generation: 3, FromNode: id, ToNode: other, Outcome: "maybe"}}}, false},
		{"outcome without destination", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: id, Generation: 3, FromNode: id, Outcome: structs.LocalMigrationFailed}}}, false},
		{"outcome without generation", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: id, FromNode: id, ToNode: other, Outcome: structs.LocalMigrationFailed}}}, false},
		{"destination is the source", HeartbeatRequest{NodeID: id, Migrations: []structs.LocalMigration{{VMID: id, Generation: 3, FromNode: id, ToNode: id, Outcome: structs.LocalMigrationUnknown}}}, false},
		{"valid announcement", HeartbeatRequest{NodeID: id, Announced: []structs.AdoptionRef{{VMID: other, Generation: 4}}}, true},
		{"announcement without generation", HeartbeatRequest{NodeID: id, Announced: []structs.AdoptionRef{{VMID: other}}}, false},
		{"bad expired adoption", HeartbeatRequest{NodeID: id, ExpiredAdoptions: []structs.AdoptionRef{{VMID: "x", Generation: 4}}}, false},
		{"too many announcements", HeartbeatRequest{NodeID: id, Announced: make([]structs.AdoptionRef, structs.MaxObservedVMs+1)}, false},
	}
	for _, tt := range tests {
		if err := tt.hb.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: err = %v", tt.name, err)
		}
	}
}

func TestStatusOfMapsSentinels(t *testing.T) {
	tests := map[error]int{structs.ErrNotFound: 404, structs.ErrConflict: 409, structs.ErrInvalid: 400, structs.ErrForbidden: 403, structs.ErrNoLeader: 503, errors.New("x"): 500}
	for err, want := range tests {
		if got := StatusOf(err); got != want {
			t.Errorf("StatusOf(%v) = %d, want %d", err, got, want)
		}
	}
}
