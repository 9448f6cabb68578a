package api

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/structs"
)

func TestDecodeBodyIsStrict(t *testing.T) {
	type inner struct {
		Key string `json:"key"`
	}
	type embedded struct {
		Promoted int `json:"promoted"`
	}
	type body struct {
		embedded
		Name   string            `json:"name"`
		Items  []inner           `json:"items"`
		Labels map[string]string `json:"labels"`
		Ptr    *inner            `json:"ptr"`
	}
	for _, tt := range []struct {
		name, in string
		field    string // "" = accepted
	}{
		{"exact names", `{"name":"a","items":[{"key":"k"}],"labels":{"X":"y"},"ptr":{"key":"p"},"promoted":1}`, ""},
		{"map keys keep their case", `{"labels":{"Name":"1","NAME":"2"}}`, ""},
		{"upper-case field", `{"NAME":"a"}`, "NAME"},
		{"mixed-case field", `{"Name":"a"}`, "Name"},
		{"case in a list item", `{"items":[{"key":"k"},{"KEY":"k"}]}`, "items[1].KEY"},
		{"case behind a pointer", `{"ptr":{"Key":"p"}}`, "ptr.Key"},
		{"case of a promoted field", `{"Promoted":1}`, "Promoted"},
		{"duplicate key", `{"name":"a","name":"b"}`, "name"},
		{"duplicate key, other case", `{"name":"a","NAME":"b"}`, "NAME"},
		{"duplicate map key", `{"labels":{"a":"1","a":"2"}}`, "labels.a"},
		{"duplicate in a list item", `{"items":[{"key":"a","key":"b"}]}`, "items[0].key"},
		{"unknown field", `{"colour":"red"}`, "colour"},
		{"trailing data", `{"name":"a"} {}`, "body"},
		{"empty", ``, "body"},
		{"malformed", `{"name":`, "body"},
		{"wrong type", `{"name":1}`, "name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var v body
			err := DecodeBody(strings.NewReader(tt.in), &v)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var e *Error
			if !errors.As(AsError(err), &e) || e.Field != tt.field || e.Status != http.StatusBadRequest {
				t.Fatalf("DecodeBody(%s) = %v, want 400 naming %q", tt.in, err, tt.field)
			}
		})
	}
}

func TestHeartbeatBounds(t *testing.T) {
	const id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	ok := func() HeartbeatRequest { return HeartbeatRequest{NodeID: id} }
	obs := structs.VMObservation{VMID: id, State: structs.StateRunning}
	for _, tt := range []struct {
		name  string
		edit  func(*HeartbeatRequest)
		field string
	}{
		{"valid", func(*HeartbeatRequest) {}, ""},
		{"long fault", func(r *HeartbeatRequest) { r.Faults = []string{strings.Repeat("f", MaxFaultLen+1)} }, "faults"},
		{"empty fault", func(r *HeartbeatRequest) { r.Faults = []string{""} }, "faults"},
		{"too many faults", func(r *HeartbeatRequest) { r.Faults = make([]string, structs.MaxFaults+1) }, "faults"},
		{"long reason", func(r *HeartbeatRequest) {
			o := obs
			o.Reason = strings.Repeat("r", MaxReasonLen+1)
			r.VMs = []structs.VMObservation{o}
		}, "vms"},
		{"adoption with a bad state", func(r *HeartbeatRequest) { o := obs; o.State = "x"; r.Adopted = []structs.VMObservation{o} }, "adopted"},
		{"long proof", func(r *HeartbeatRequest) {
			o := obs
			o.Proof = strings.Repeat("p", 65)
			r.Adopted = []structs.VMObservation{o}
		}, "adopted"},
		{"stale copy with a bad state", func(r *HeartbeatRequest) { o := obs; o.State = ""; r.StaleDestroyed = []structs.VMObservation{o} }, "stale_destroyed"},
		{"long drain id", func(r *HeartbeatRequest) { r.LocalDrainID = strings.Repeat("d", MaxIDLen+1) }, "local_drain_id"},
		{"long to_addr", func(r *HeartbeatRequest) {
			r.Migrations = []structs.LocalMigration{{VMID: id, ToAddr: strings.Repeat("a", 300)}}
		}, "migrations"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := ok()
			tt.edit(&r)
			err := r.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if e := AsError(err); e.Field != tt.field {
				t.Fatalf("Validate = %v, want the field %q", err, tt.field)
			}
		})
	}
}

func TestMigrationReportBounds(t *testing.T) {
	const id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	for _, tt := range []struct {
		name  string
		rep   MigrationReport
		field string
	}{
		{"valid", MigrationReport{VMID: id, Error: "libvirt said no"}, ""},
		{"bad vm", MigrationReport{VMID: "x"}, "vm_id"},
		{"long error", MigrationReport{VMID: id, Error: strings.Repeat("e", MaxErrorLen+1)}, "error"},
		{"long task id", MigrationReport{VMID: id, TaskID: strings.Repeat("t", MaxIDLen+1)}, "task_id"},
		{"truncated error passes", MigrationReport{VMID: id, Error: Truncate(strings.Repeat("é", MaxErrorLen), MaxErrorLen)}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.rep.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if e := AsError(err); e.Field != tt.field {
				t.Fatalf("Validate = %v, want the field %q", err, tt.field)
			}
		})
	}
}
