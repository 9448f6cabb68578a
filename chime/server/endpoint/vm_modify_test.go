package endpoint_test

import (
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

func TestModifyVMHASettings(t *testing.T) {
	w := newWorld(t)
	if _, err := w.ep.CreateVM(w.ctx, "c1", api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64, HA: true}); err != nil {
		t.Fatal(err)
	}
	high, bad, no := structs.PriorityHigh, "urgent", false
	tests := []struct {
		name     string
		req      api.ModifyVMRequest
		wantErr  string // field named by the error
		wantHA   bool
		wantPrio string
	}{
		{name: "priority", req: api.ModifyVMRequest{Priority: &high}, wantHA: true, wantPrio: "high"},
		{name: "bad priority", req: api.ModifyVMRequest{Priority: &bad}, wantErr: "priority", wantHA: true, wantPrio: "high"},
		{name: "nothing", req: api.ModifyVMRequest{}, wantErr: "priority", wantHA: true, wantPrio: "high"},
		{name: "ha off", req: api.ModifyVMRequest{HA: &no}, wantHA: false, wantPrio: "high"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.ep.ModifyVM(w.ctx, "", "web", tc.req)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("modify: %v", err)
			case tc.wantErr != "" && (err == nil || structs.AsError(err).Field != tc.wantErr):
				t.Fatalf("modify: %v, want an error naming %s", err, tc.wantErr)
			}
			vm := w.vm("web")
			if vm.Spec.HA != tc.wantHA || vm.Spec.Priority != tc.wantPrio {
				t.Fatalf("spec ha=%v priority=%q, want %v %q", vm.Spec.HA, vm.Spec.Priority, tc.wantHA, tc.wantPrio)
			}
		})
	}
}
