package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"
)

// startVMAgent is a simulated agent that runs whatever its desired state
// says: each heartbeat lists every desired-running VM running at its
// generation. While alive is false it neither heartbeats nor answers the
// ping-back.
func startVMAgent(t *testing.T, c *api.Client, m *tlsconf.Material, name string, every time.Duration) *simAgent {
	t.Helper()
	return startFakeAgent(t, c, m, name, every, true)
}

// TestIncidentEndToEnd: on a real three-server cluster, an ha VM's node
// goes silent; the leader marks it unreachable, fences it (a fence command
// that succeeds), restarts the VM on the other node, whose agent runs it;
// the operator drains the dead node. One incident tells the story, the
// same on every server: detection after the silence, the fence, the
// restart with its evidence, the VM's recovery, the operator's drain with
// who did it, the resolution, and durations that match the clock.
func TestIncidentEndToEnd(t *testing.T) {
	interval := 250 * time.Millisecond
	fence := filepath.Join(t.TempDir(), "fence.sh")
	if err := os.WriteFile(fence, []byte("#!/bin/sh\necho powered off \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tc := newTestCluster(t, 3, func(c *Config) {
		c.HeartbeatInterval, c.MissedHeartbeats, c.FenceCommand = interval, 3, fence
	})
	l := tc.leader(30 * time.Second)
	op := tc.client(l)
	ctx := context.Background()
	hv1 := startVMAgent(t, tc.clientOf(tlsconf.RoleAgent, tc.urls()...), tc.agent, "hv1", interval)
	hv2 := startVMAgent(t, tc.clientOf(tlsconf.RoleAgent, tc.urls()...), tc.agent, "hv2", interval)
	var vm *structs.VM
	wait.For(t, 20*time.Second, "ha vm created on hv1", func() (bool, string) {
		var err error
		vm, err = op.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64, HA: true})
		return err == nil, fmt.Sprint(err)
	})
	wait.For(t, 20*time.Second, "vm running", func() (bool, string) {
		v, err := op.GetVM(ctx, vm.ID)
		return err == nil && v.State == structs.StateRunning, fmt.Sprintf("%+v %v", v, err)
	})
	// hv1 is the VM's node, whichever the scheduler picked.
	if vm.NodeID == hv2.id {
		hv1, hv2 = hv2, hv1
	}
	dead, _ := op.GetNode(ctx, hv1.id)
	list, idx, err := op.Incidents(ctx, api.IncidentFilter{}, api.QueryOptions{})
	if err != nil || len(list) != 0 || idx != 1 {
		t.Fatalf("incidents of a healthy cluster: %+v index %d %v, want none at index 1", list, idx, err)
	}
	// A blocking query on the empty list waits (for the first incident).
	began := time.Now()
	if _, idx, err := op.Incidents(ctx, api.IncidentFilter{}, api.QueryOptions{Index: 1, Wait: 300 * time.Millisecond}); err != nil || idx != 1 || time.Since(began) < 250*time.Millisecond {
		t.Fatalf("blocking query on no incidents: index %d after %s, %v; want it to wait 300ms", idx, time.Since(began), err)
	}

	hv1.alive.Store(false)
	silenced := time.Now()
	var inc *structs.Incident
	wait.For(t, 30*time.Second, "an open incident on the dead node", func() (bool, string) {
		list, _, err := op.Incidents(ctx, api.IncidentFilter{State: structs.IncidentOpen, Node: dead.Name}, api.QueryOptions{})
		if err != nil || len(list) != 1 {
			return false, fmt.Sprintf("%d %v", len(list), err)
		}
		inc = &list[0]
		return true, ""
	})
	detected := time.Since(silenced)
	wait.For(t, 30*time.Second, "vm running on the other node", func() (bool, string) {
		v, err := op.GetVM(ctx, vm.ID)
		return err == nil && v.State == structs.StateRunning && v.NodeID == hv2.id, fmt.Sprintf("%s on %s %v", v.State, v.NodeID, err)
	})
	running := time.Since(silenced)
	wait.For(t, 20*time.Second, "the vm recovered in the incident", func() (bool, string) {
		got, err := op.Incident(ctx, inc.ID)
		if err != nil || len(got.VMs) != 1 || got.VMs[0].Outcome != structs.VMRecoveredRunning {
			return false, fmt.Sprintf("%+v %v", got, err)
		}
		inc = got
		return true, ""
	})
	if inc.State != structs.IncidentOpen {
		t.Fatalf("incident %s while hv1 is unreachable and not drained", inc.State)
	}
	if _, err := op.NodeTask(ctx, hv1.id, "drain", nil); err != nil {
		t.Fatalf("drain the dead node: %v", err)
	}
	wait.For(t, 30*time.Second, "incident resolved", func() (bool, string) {
		got, err := op.Incident(ctx, inc.ID)
		if err != nil || got.State != structs.IncidentResolved {
			return false, fmt.Sprintf("%+v %v", got, err)
		}
		inc = got
		return true, ""
	})
	var kinds []string
	for _, e := range inc.Timeline {
		kinds = append(kinds, e.Kind)
		t.Logf("%+8s %-24s %4d %-20s %s", e.Time.Sub(inc.FirstEvidence).Round(time.Millisecond), e.Kind, e.EventSeq, e.Actor, e.Message)
	}
	t.Logf("detected %s after the silence (ttd %s), vm running after %s (ttr %s); resolution %q",
		detected.Round(time.Millisecond), inc.TimeToDetect, running.Round(time.Millisecond), inc.TimeToRecover, inc.Resolution)
	want := []string{"node.last_heartbeat", "node.unreachable", structs.IncidentEntryOpened, "fence.succeeded", "vm.placed", "ha.restarted",
		structs.IncidentEntryRecovered, "node.drained", structs.IncidentEntryResolved}
	for _, k := range want {
		if !slices.Contains(kinds, k) {
			t.Fatalf("timeline %v lacks %s", kinds, k)
		}
	}
	if !slices.ContainsFunc(inc.Alarms, func(a structs.IncidentAlarm) bool { return a.Name == "NodeUnreachable" }) {
		t.Fatalf("alarms %+v lack NodeUnreachable", inc.Alarms)
	}
	// The operator's drain is audited with who did it.
	wait.For(t, 10*time.Second, "the drain's audit record in the timeline", func() (bool, string) {
		got, err := op.Incident(ctx, inc.ID)
		if err != nil {
			return false, err.Error()
		}
		inc = got
		return slices.ContainsFunc(got.Timeline, func(e structs.IncidentEntry) bool {
			return e.Kind == structs.EventAudit && strings.HasPrefix(e.Actor, "token:") && strings.Contains(e.Message, "/drain")
		}), fmt.Sprint(len(got.Timeline))
	})
	// Detection: the silence bound (3 × 250ms) plus the ping-back, within
	// generous bounds; the time to detect is what the leader measured.
	if inc.TimeToDetect < 3*interval || inc.TimeToDetect > 10*time.Second {
		t.Fatalf("time to detect %s, want between %s and 10s", inc.TimeToDetect, 3*interval)
	}
	if inc.TimeToRecover < inc.TimeToDetect || inc.TimeToRecover > running+5*time.Second {
		t.Fatalf("time to recover %s, want between the detection %s and the observed %s (+5s)", inc.TimeToRecover, inc.TimeToDetect, running)
	}
	if inc.VMs[0].RecoveredOn != hv2.id {
		t.Fatalf("vm recovered on %s, want hv2", inc.VMs[0].RecoveredOn)
	}
	// Every server answers the same, through its own state.
	wait.For(t, 10*time.Second, "every server's copy equal", func() (bool, string) {
		var first []byte
		for i := range tc.srv {
			got, err := tc.client(i).Incident(ctx, inc.ID)
			if err != nil {
				return false, err.Error()
			}
			b, _ := json.Marshal(got)
			if first == nil {
				first = b
			} else if !reflect.DeepEqual(first, b) {
				return false, fmt.Sprintf("server %d differs", i)
			}
		}
		return true, ""
	})

	// Bad ids and filters: 400 naming the field; an unknown id 404.
	for _, tc2 := range []struct {
		path   string
		status int
		field  string
	}{
		{"/v1/incidents?state=closed", 400, "state"},
		{"/v1/incidents/abc", 400, "id"},
		{"/v1/incidents/0", 400, "id"},
		{"/v1/incidents/99999", 404, "id"},
		{"/v1/incidents?index=x", 400, "index"},
	} {
		status, body := rawGet(t, tc, l, tc2.path)
		var eb api.Error
		if err := json.Unmarshal(body, &eb); err != nil || status != tc2.status || eb.Field != tc2.field {
			t.Errorf("GET %s: %d %s, want %d naming %q", tc2.path, status, body, tc2.status, tc2.field)
		}
	}
	if list, _, err := op.Incidents(ctx, api.IncidentFilter{Node: "no-such-node"}, api.QueryOptions{}); err != nil || len(list) != 0 {
		t.Fatalf("incidents of an unknown node: %+v %v, want none", list, err)
	}
}

// rawGet calls GET path on server i with the operator's certificate and
// token, and returns the status and body.
func rawGet(t *testing.T, tc *testCluster, i int, path string) (int, []byte) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc.cli.ClientConfig(tlsconf.RoleServer)}, Timeout: 10 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, tc.cfgs[i].APIURL()+path, nil)
	req.Header.Set(api.HeaderToken, tc.token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestIncidentRetention: with --incident-retention 2, the leader prunes
// the oldest resolved incidents through Raft; the open one stays.
func TestIncidentRetention(t *testing.T) {
	interval := 100 * time.Millisecond
	srv, base := devServerWith(t, func(c *Config) {
		c.HeartbeatInterval, c.MissedHeartbeats, c.IncidentRetention = interval, 3, 2
		c.incidentPruneEvery = 50 * time.Millisecond
	})
	c := api.NewClient(base)
	ctx := context.Background()
	a := startSimAgent(t, api.NewClient(base), nil, "hv1", interval)
	for i := 1; i <= 4; i++ {
		a.alive.Store(false)
		wait.For(t, 20*time.Second, fmt.Sprintf("incident %d open", i), func() (bool, string) {
			inc, err := c.Incident(ctx, uint64(i))
			return err == nil && inc.State == structs.IncidentOpen, fmt.Sprint(err)
		})
		if i == 4 {
			break
		}
		a.alive.Store(true)
		wait.For(t, 20*time.Second, fmt.Sprintf("incident %d resolved", i), func() (bool, string) {
			inc, err := c.Incident(ctx, uint64(i))
			return err == nil && inc.State == structs.IncidentResolved, fmt.Sprint(err)
		})
	}
	wait.For(t, 10*time.Second, "the oldest resolved pruned", func() (bool, string) {
		list, _, err := c.Incidents(ctx, api.IncidentFilter{}, api.QueryOptions{})
		var ids []uint64
		for _, inc := range list {
			ids = append(ids, inc.ID)
		}
		return err == nil && slices.Equal(ids, []uint64{4, 3, 2}), fmt.Sprint(ids, err)
	})
	if _, err := c.Incident(ctx, 1); api.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("pruned incident 1: %v, want 404", err)
	}
	if n := srv.FSM().ResolvedIncidents(); n != 2 {
		t.Fatalf("%d resolved kept, want 2", n)
	}
}
