package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// TestHARoutes drives admission control, the arm switch and the failover
// plan through the HTTP API of a dev server (default
// --ha-tolerate-failures 1).
func TestHARoutes(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	registerNode(t, c, "hv1")

	// One node cannot survive one failure: 409 with the rule in the body.
	body := `{"name":"web","vcpus":1,"memory_mib":64,"ha":true}`
	resp, err := http.Post(base+"/v1/vms", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var eb api.Error
	_ = json.NewDecoder(resp.Body).Decode(&eb)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || eb.Field != "ha" || !strings.Contains(eb.Message, "ha-tolerate-failures") {
		t.Fatalf("ha create on one node: %d %+v, want 409 naming the rule", resp.StatusCode, eb)
	}
	registerNode(t, c, "hv2")
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64, HA: true})
	if err != nil {
		t.Fatalf("ha create on two nodes: %v", err)
	}

	plan, err := c.Failover(ctx, "vms", "web")
	if err != nil || len(plan.Entries) != 1 || !plan.Reservation.OK {
		t.Fatalf("vm failover: %+v %v", plan, err)
	}
	if e := plan.Entries[0]; e.VMID != vm.ID || !e.Safe || e.Target == "" || e.Target == vm.NodeID {
		t.Fatalf("entry %+v for vm on %s", e, vm.NodeID)
	}
	if plan, err := c.Failover(ctx, "nodes", vm.NodeID); err != nil || len(plan.Entries) != 1 {
		t.Fatalf("node failover: %+v %v", plan, err)
	}
	if plan, err := c.Failover(ctx, "", ""); err != nil || len(plan.Entries) != 1 || len(plan.Reservation.Nodes) != 2 {
		t.Fatalf("failover: %+v %v", plan, err)
	}

	st, err := c.HAStatus(ctx)
	if err != nil || !st.Armed || st.Counted != 2 || st.Reservation == nil || !st.Reservation.OK {
		t.Fatalf("status: %+v %v", st, err)
	}
	if st, err = c.SetHAArmed(ctx, false, "maintenance"); err != nil || st.Armed || !st.Switch.Disarmed {
		t.Fatalf("disarm: %+v %v", st, err)
	}
	if st, err = c.SetHAArmed(ctx, true, ""); err != nil || !st.Armed {
		t.Fatalf("arm: %+v %v", st, err)
	}
	for _, tc := range []struct {
		path, body string
		status     int
		field      string
	}{
		{"/v1/operator/ha/explode", "", 404, "action"},
		{"/v1/operator/ha/disarm", `{"reason":"` + strings.Repeat("x", api.MaxHAReasonLen+1) + `"}`, 400, "reason"},
		{"/v1/operator/ha/disarm", `{"why":"x"}`, 400, "why"},
	} {
		resp, err := http.Post(base+tc.path, "application/json", bytes.NewReader([]byte(tc.body)))
		if err != nil {
			t.Fatal(err)
		}
		var eb api.Error
		_ = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != tc.status || eb.Field != tc.field {
			t.Errorf("POST %s %s: %d %+v, want %d naming %s", tc.path, tc.body, resp.StatusCode, eb, tc.status, tc.field)
		}
	}
	if st, _ := c.HAStatus(ctx); st.Switch.Disarmed {
		t.Fatal("a refused disarm disarmed")
	}
	if _, err := c.Failover(ctx, "vms", "nope"); !errors.Is(err, structs.ErrNotFound) {
		t.Fatalf("failover of an unknown vm: %v", err)
	}
}
