package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// `chime incident list|show` on a dev server: a node that registers,
// heartbeats, falls silent (no ping-back answers at its address) and
// comes back is one resolved incident; the table, the JSON and the
// timeline print it, and bad arguments are refused before any request.
func TestIncidentCommands(t *testing.T) {
	p := ports.Free(t, "127.0.0.1", 3)
	cfg := server.DefaultConfig()
	cfg.Dev, cfg.Name, cfg.DataDir = true, "dev", filepath.Join(t.TempDir(), "dev")
	cfg.APIPort, cfg.RaftPort, cfg.GossipPort = p[0], p[1], p[2]
	cfg.GossipProfile, cfg.RaftTimeScale = "local", 0.25
	cfg.HeartbeatInterval, cfg.MissedHeartbeats = 200*time.Millisecond, 3
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn})
	s, err := server.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	addr := cfg.APIURL()
	ctx := context.Background()
	c := api.NewClient(addr)
	var reg *api.RegisterResponse
	wait.For(t, 20*time.Second, "node registered", func() (bool, string) {
		reg, err = c.Register(ctx, api.RegisterRequest{ID: uuid.NewString(), Name: "hv1", APIAddr: "127.0.0.1:1", VCPUs: 4, MemoryMiB: 4096})
		return err == nil, "register: " + errString(err)
	})
	c.Node, c.Secret = reg.NodeID, reg.Secret
	// As a real agent, it names the desired state it applied: an
	// unreachable node returns only with a current one.
	beat := func() error {
		ds, err := c.Desired(ctx, api.QueryOptions{})
		if err != nil {
			return err
		}
		_, err = c.Heartbeat(ctx, api.HeartbeatRequest{NodeID: reg.NodeID, VMs: []structs.VMObservation{}, DesiredIndex: ds.Index})
		return err
	}
	wait.For(t, 20*time.Second, "an open incident with its alarm firing", func() (bool, string) {
		list, _, err := c.Incidents(ctx, api.IncidentFilter{State: structs.IncidentOpen}, api.QueryOptions{})
		return err == nil && len(list) == 1 && len(list[0].Alarms) == 1, errString(err)
	})
	open := runOut(t, "incident", "list", "--address", addr, "--state", "open")
	wait.For(t, 20*time.Second, "resolved", func() (bool, string) {
		if err := beat(); err != nil {
			return false, err.Error()
		}
		inc, err := c.Incident(ctx, 1)
		return err == nil && inc.State == structs.IncidentResolved, errString(err)
	})
	// The alarm's resolution joins after the incident's.
	wait.For(t, 20*time.Second, "alarm resolved in the incident", func() (bool, string) {
		_ = beat()
		inc, err := c.Incident(ctx, 1)
		b, _ := json.Marshal(inc)
		return err == nil && len(inc.Alarms) == 1 && inc.Alarms[0].Status == "resolved", string(b) + errString(err)
	})
	list := runOut(t, "incident", "list", "--address", addr)
	show := runOut(t, "incident", "show", "--address", addr, "1")
	t.Logf("chime incident list --state open (while open):\n%s", open)
	t.Logf("chime incident list:\n%s", list)
	t.Logf("chime incident show 1:\n%s", show)
	for _, want := range []string{"ID  STATE", "open", "node_unreachable", "hv1", "0/0"} {
		if !strings.Contains(open, want) {
			t.Errorf("list --state open lacks %q:\n%s", want, open)
		}
	}
	if !strings.Contains(list, "resolved") || strings.Contains(list, " open ") {
		t.Errorf("list after the return:\n%s", list)
	}
	for _, want := range []string{"Time to detect", "Time to recover", "node normal", "+0s", "node.last_heartbeat", "node.unreachable",
		"incident.opened", "node.normal", "incident.resolved", "alarm.firing", "alarm.resolved", "NodeUnreachable (resolved)"} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	var got []structs.Incident
	if err := json.Unmarshal([]byte(runOut(t, "incident", "list", "--address", addr, "--json")), &got); err != nil || len(got) != 1 || got[0].ID != 1 {
		t.Errorf("list --json: %+v %v", got, err)
	}
	if none := runOut(t, "incident", "list", "--address", addr, "--state", "open", "-o", "json"); strings.TrimSpace(none) != "[]" {
		t.Errorf("list --state open -o json after the return: %q, want []", none)
	}
	for _, args := range [][]string{
		{"incident", "list", "--state", "closed"},
		{"incident", "show", "x1"},
		{"incident", "show"},
	} {
		full := append([]string{"chime"}, args[:2]...)
		full = append(append(full, "--address", addr), args[2:]...)
		if err := App().RunContext(ctx, full); err == nil {
			t.Errorf("chime %s: no error", strings.Join(args, " "))
		}
	}
	if err := App().RunContext(ctx, []string{"chime", "incident", "show", "--address", addr, "7"}); api.StatusOf(err) != 404 {
		t.Errorf("show 7: %v, want 404", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
