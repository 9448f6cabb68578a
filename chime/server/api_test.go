package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
)

func devServer(t *testing.T) (*Server, string) {
	t.Helper()
	return devServerWith(t, nil)
}

func devServerWith(t *testing.T, tweak func(*Config)) (*Server, string) {
	t.Helper()
	ports := ports.Free(t, "127.0.0.1", 3)
	cfg := DefaultConfig()
	cfg.Dev, cfg.Name, cfg.DataDir = true, "dev", filepath.Join(t.TempDir(), "dev")
	cfg.APIPort, cfg.RaftPort, cfg.GossipPort = ports[0], ports[1], ports[2]
	cfg.GossipProfile, cfg.RaftTimeScale = "local", 0.25
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn})
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	deadline := time.Now().Add(20 * time.Second)
	for !s.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("dev server did not become leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Wait for the leader loop's barrier so writes are accepted.
	if err := s.raft.Barrier(10 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	return s, cfg.APIURL()
}

func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	s, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	registerNode(t, c, "hv1")
	if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "webby", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
	big := `{"name":"x","vcpus":1,"memory_mib":64,"labels":{"k":"` + strings.Repeat("a", structs.MaxBodyBytes) + `"}}`
	tests := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"malformed json", "POST", "/v1/vms", `{"name":`, 400, "body"},
		{"empty body", "POST", "/v1/vms", ``, 400, "body"},
		{"unknown field", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"colour":"red"}`, 400, "colour"},
		{"wrong type", "POST", "/v1/vms", `{"name":"a","vcpus":"one","memory_mib":64}`, 400, "vcpus"},
		{"trailing data", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64} {}`, 400, "body"},
		{"field name in upper case", "POST", "/v1/vms", `{"NAME":"a","vcpus":1,"memory_mib":64}`, 400, "NAME"},
		{"field name in other case", "POST", "/v1/vms", `{"name":"a","VCPUs":1,"memory_mib":64}`, 400, "VCPUs"},
		{"duplicate key", "POST", "/v1/vms", `{"name":"a","name":"b","vcpus":1,"memory_mib":64}`, 400, "name"},
		{"duplicate label key", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"labels":{"k":"1","k":"2"}}`, 400, "labels.k"},
		{"register field case", "POST", "/v1/agent/register", `{"ID":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","api_addr":"127.0.0.1:1","vcpus":1,"memory_mib":64}`, 400, "ID"},
		{"oversized body", "POST", "/v1/vms", big, 413, "body"},
		{"bad name", "POST", "/v1/vms", `{"name":"Web_1","vcpus":1,"memory_mib":64}`, 400, "name"},
		{"long name", "POST", "/v1/vms", `{"name":"` + strings.Repeat("a", 64) + `","vcpus":1,"memory_mib":64}`, 400, "name"},
		{"zero vcpus", "POST", "/v1/vms", `{"name":"a","vcpus":0,"memory_mib":64}`, 400, "vcpus"},
		{"too many vcpus", "POST", "/v1/vms", `{"name":"a","vcpus":257,"memory_mib":64}`, 400, "vcpus"},
		{"too little memory", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":15}`, 400, "memory_mib"},
		{"relative disk", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["disk.img"]}`, 400, "disks"},
		{"disk outside the storage roots", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/images/ok.qcow2","/srv/x.qcow2"]}`, 400, "disks"},
		{"disk is a device", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/images/ok.qcow2","/dev/sda"]}`, 400, "disks"},
		{"disk is a host file", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/images/ok.qcow2","/etc/shadow"]}`, 400, "disks"},
		{"disk is the root itself", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/images/ok.qcow2","/var/lib/chime/images"]}`, 400, "disks"},
		{"disk in a sibling of the root", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/images/ok.qcow2","/var/lib/chime/images2/x.img"]}`, 400, "disks"},
		{"disk is chime state", "POST", "/v1/vms", `{"name":"a","vcpus":1,"memory_mib":64,"disks":["/var/lib/chime/images/ok.qcow2","/var/lib/chime/raft/raft.db"]}`, 400, "disks"},
		{"duplicate name", "POST", "/v1/vms", `{"name":"web","vcpus":1,"memory_mib":64}`, 409, "name"},
		{"unknown vm", "GET", "/v1/vms/nope", ``, 404, "vm"},
		{"ambiguous prefix", "POST", "/v1/vms/w/stop", ``, 404, "vm"},
		{"unknown action", "POST", "/v1/vms/web/explode", ``, 404, "action"},
		{"body on stop", "POST", "/v1/vms/web/stop", `{"force":true}`, 400, "force"},
		{"unknown node", "POST", "/v1/nodes/nope/drain", ``, 404, "node"},
		{"bad blocking index", "GET", "/v1/vms?index=abc", ``, 400, "index"},
		{"bad wait", "GET", "/v1/vms?index=1&wait=forever", ``, 400, "wait"},
		{"register bad id", "POST", "/v1/agent/register", `{"id":"x","name":"hv2","api_addr":"127.0.0.1:1","vcpus":1,"memory_mib":64}`, 400, "id"},
		{"register bad name", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"Bad_Name","api_addr":"127.0.0.1:1","vcpus":1,"memory_mib":64}`, 400, "name"},
		{"register too many vcpus", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","api_addr":"127.0.0.1:1","vcpus":65537,"memory_mib":64}`, 400, "vcpus"},
		{"unknown node action", "POST", "/v1/nodes/hv1/explode", ``, 404, "action"},
		{"register api_addr missing", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":""}`, 400, "api_addr"},
		{"register api_addr with a path", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:4660/admin"}`, 400, "api_addr"},
		{"register api_addr with a query", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:4660?x=1"}`, 400, "api_addr"},
		{"register api_addr a URL", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"http://127.0.0.1:4660/v1"}`, 400, "api_addr"},
		{"register api_addr user info", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"u:p@127.0.0.1:4660"}`, 400, "api_addr"},
		{"register api_addr no port", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1"}`, 400, "api_addr"},
		{"register api_addr bad port", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:70000"}`, 400, "api_addr"},
		{"register gossip_addr bad", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","gossip_addr":"x/y:1"}`, 400, "gossip_addr"},
		{"register migration_uri scheme", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_uri":"http://10.0.0.1/system"}`, 400, "migration_uri"},
		{"register migration_uri ssh", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_uri":"qemu+ssh://10.0.0.1/system"}`, 400, "migration_uri"},
		{"register migration_uri query", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_uri":"qemu+tcp://10.0.0.1/system?socket=/x"}`, 400, "migration_uri"},
		{"register migration_uri path", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_uri":"qemu+tcp://10.0.0.1/session"}`, 400, "migration_uri"},
		{"register migration_uri user info", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_uri":"qemu+tls://root@10.0.0.1/system"}`, 400, "migration_uri"},
		{"register migration_uri tcp path", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_uri":"tcp://10.0.0.1:49152/x"}`, 400, "migration_uri"},
		{"register migration_addr bad", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","migration_addr":"10.0.0.1/24"}`, 400, "migration_addr"},
		{"register business_interface bad", "POST", "/v1/agent/register", `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv2","vcpus":1,"memory_mib":64,"api_addr":"127.0.0.1:1","business_interface":"eth0; rm -rf"}`, 400, "business_interface"},
		{"body on node enable", "POST", "/v1/nodes/hv1/enable", `{"state":"gone"}`, 400, "state"},
		{"heartbeat without credentials", "POST", "/v1/agent/heartbeat", `{}`, 401, ""},
		{"unknown endpoint", "GET", "/v1/nothing", ``, 404, "path"},
	}
	before, _ := s.fsm.VMs()
	beforeNodes, _ := s.fsm.Nodes()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, base+tt.path, bytes.NewReader([]byte(tt.body)))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, data)
			}
			var e api.Error
			if err := json.Unmarshal(data, &e); err != nil || e.Message == "" {
				t.Fatalf("body is not a JSON error: %q", data)
			}
			if e.Field != tt.field {
				t.Fatalf("field %q, want %q (%s)", e.Field, tt.field, e.Message)
			}
		})
	}
	after, _ := s.fsm.VMs()
	afterNodes, _ := s.fsm.Nodes()
	if !reflect.DeepEqual(before, after) || !reflect.DeepEqual(beforeNodes, afterNodes) {
		t.Fatalf("refused requests changed the state")
	}
}

func TestAmbiguousPrefixNamesTheProblem(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	// Create until two ids share a first character, then ask by it.
	seen := map[byte]bool{}
	var prefix string
	for i := 0; i < 40 && prefix == ""; i++ {
		vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("v%d", i), VCPUs: 1, Memory: 64})
		if err != nil {
			t.Fatal(err)
		}
		if seen[vm.ID[0]] {
			prefix = vm.ID[:1]
		}
		seen[vm.ID[0]] = true
	}
	_, err := c.GetVM(ctx, prefix)
	if err == nil || !strings.Contains(err.Error(), "ambiguous") || api.StatusOf(err) != 400 {
		t.Fatalf("GetVM(%q) = %v, want a 400 naming the ambiguity", prefix, err)
	}
}

func TestPendingVMIsPlacedWhenCapacityAppears(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "waiting", VCPUs: 2, Memory: 128})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != structs.StatePending || vm.NodeID != "" {
		t.Fatalf("vm without nodes: state %q node %q, want pending", vm.State, vm.NodeID)
	}
	r := registerNode(t, c, "hv1")
	wait.For(t, 15*time.Second, "pending VM placed once a node registers", func() (bool, string) {
		got, err := c.GetVM(ctx, "waiting")
		if err != nil {
			return false, err.Error()
		}
		if got.NodeID != r.NodeID {
			return false, fmt.Sprintf("vm on %q state %s", got.NodeID, got.State)
		}
		return true, ""
	})
}

func TestAgentEndpointsAuthenticate(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	r := registerNode(t, c, "hv1")
	// Re-registering the same id without the secret is refused.
	_, err := c.Register(ctx, api.RegisterRequest{ID: r.NodeID, Name: "hv1", APIAddr: "x:1", VCPUs: 1, MemoryMiB: 64})
	if api.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("re-register without secret: %v, want 403", err)
	}
	// With the secret it keeps the same secret.
	r2, err := c.Register(ctx, api.RegisterRequest{ID: r.NodeID, Name: "hv1", Secret: r.Secret, APIAddr: "x:1", VCPUs: 64, MemoryMiB: 1 << 20})
	if err != nil || r2.Secret != r.Secret {
		t.Fatalf("re-register with secret: %v", err)
	}
	agent := api.NewClient(base)
	agent.Node, agent.Secret = r.NodeID, "wrong"
	if _, err := agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: r.NodeID}); api.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("heartbeat with a wrong secret: %v, want 403", err)
	}
	other := registerNode(t, c, "hv2")
	agent.Secret = r.Secret
	if _, err := agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: other.NodeID}); api.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("heartbeat for another node: %v, want 403", err)
	}
	// Desired state: blocking query wakes on a placement for this node.
	d, err := agent.Desired(ctx, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *api.DesiredState, 1)
	go func() {
		got, _ := agent.Desired(ctx, api.QueryOptions{Index: d.Index, Wait: 20 * time.Second})
		done <- got
	}()
	time.Sleep(200 * time.Millisecond)
	// Nodes are spread over: create VMs until one lands on hv1.
	for i := 0; i < 4; i++ {
		if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("w%d", i), VCPUs: 1, Memory: 64}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case got := <-done:
		if got == nil || got.Index <= d.Index || len(got.VMs) == 0 {
			vms, _, _ := c.ListVMs(ctx, api.QueryOptions{})
			for _, v := range vms {
				t.Logf("vm %s on %s", v.Name, v.NodeID)
			}
			t.Fatalf("blocking desired query (node %s, hv2 %s) woke with %+v", r.NodeID, other.NodeID, got)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("blocking desired query did not wake")
	}
}

// TestRetriedWritesAnswerLikeTheFirst sends the same request id twice, as
// the client does when the first answer was lost.
func TestRetriedWritesAnswerLikeTheFirst(t *testing.T) {
	s, base := devServer(t)
	post := func(path, reqID, body string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set(api.HeaderRequestID, reqID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, data
	}
	for i := 0; i < 2; i++ {
		code, data := post("/v1/vms", "create-once", `{"name":"once","vcpus":1,"memory_mib":64}`)
		if code != http.StatusCreated {
			t.Fatalf("attempt %d: %d %s", i+1, code, data)
		}
	}
	if vms, _ := s.fsm.VMs(); len(vms) != 1 {
		t.Fatalf("%d VMs after a retried create, want 1", len(vms))
	}
	body := `{"id":"6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv9","secret":"` + strings.Repeat("ab", 32) + `","api_addr":"127.0.0.1:1","vcpus":4,"memory_mib":4096}`
	for i := 0; i < 2; i++ {
		code, data := post("/v1/agent/register", "register-once", body)
		if code != http.StatusOK {
			t.Fatalf("register attempt %d: %d %s", i+1, code, data)
		}
		var rr api.RegisterResponse
		if err := json.Unmarshal(data, &rr); err != nil || rr.Secret != strings.Repeat("ab", 32) {
			t.Fatalf("register attempt %d answered secret %q", i+1, rr.Secret)
		}
	}
	// A short secret is refused, naming the field.
	code, data := post("/v1/agent/register", "register-short", `{"id":"7b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b","name":"hv8","secret":"short","api_addr":"127.0.0.1:1","vcpus":4,"memory_mib":4096}`)
	if code != http.StatusBadRequest || !strings.Contains(string(data), `"secret"`) {
		t.Fatalf("short secret: %d %s", code, data)
	}
}

// TestAgentInputIsRefused: what an agent sends is judged at the endpoint
// (the FSM applies what the log says), with a 400 naming the field, and
// changes nothing.
func TestAgentInputIsRefused(t *testing.T) {
	s, base := devServer(t)
	c := api.NewClient(base)
	r := registerNode(t, c, "hv1")
	agent := api.NewClient(base)
	agent.Node, agent.Secret, agent.Retries = r.NodeID, r.Secret, 0
	vmID := "6b1f8f4e-1c1d-4f0e-9a57-0f1f2e3d4c5b"
	tests := []struct {
		name  string
		hb    api.HeartbeatRequest
		field string
	}{
		{"bad observed state", api.HeartbeatRequest{VMs: []structs.VMObservation{{VMID: vmID, State: "flying"}}}, "vms"},
		{"bad vm id", api.HeartbeatRequest{VMs: []structs.VMObservation{{VMID: "x", State: structs.StateRunning}}}, "vms"},
		{"too many faults", api.HeartbeatRequest{Faults: make([]string, structs.MaxFaults+1)}, "faults"},
		{"bad migration", api.HeartbeatRequest{Migrations: []structs.LocalMigration{{VMID: "x"}}}, "migrations"},
	}
	before, _ := s.fsm.Nodes()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.hb.NodeID = r.NodeID
			_, err := agent.Heartbeat(context.Background(), tt.hb)
			if api.StatusOf(err) != http.StatusBadRequest || api.AsError(err).Field != tt.field {
				t.Fatalf("err = %v (status %d, field %q), want 400 naming %q", err, api.StatusOf(err), api.AsError(err).Field, tt.field)
			}
		})
	}
	if after, _ := s.fsm.Nodes(); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused heartbeats changed the nodes")
	}
}

// TestRequestIDs: an over-long request id is refused before it reaches the
// log (it could not be stored, and would halt every state machine), and
// writes without one are not taken for retries of each other.
func TestRequestIDs(t *testing.T) {
	s, base := devServer(t)
	c := api.NewClient(base)
	post := func(path, reqID string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, base+path, nil)
		if reqID != "" {
			req.Header.Set(api.HeaderRequestID, reqID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	registerNode(t, c, "hv1")
	registerNode(t, c, "hv2")
	if code, body := post("/v1/nodes/hv1/disable", strings.Repeat("r", api.MaxRequestIDLen+1)); code != http.StatusBadRequest || !strings.Contains(body, api.HeaderRequestID) {
		t.Fatalf("over-long request id: %d %s, want 400 naming %s", code, body, api.HeaderRequestID)
	}
	if n, _ := s.fsm.ResolveNode("hv1"); n.ManagementState != structs.NodeEnabled {
		t.Fatalf("refused request changed hv1 to %s", n.ManagementState)
	}
	// A drain proposes "<request id>-drain": two drains without an id must
	// not share one.
	for _, name := range []string{"hv1", "hv2"} {
		if code, body := post("/v1/nodes/"+name+"/drain", ""); code != http.StatusOK {
			t.Fatalf("drain %s: %d %s", name, code, body)
		}
		if n, _ := s.fsm.ResolveNode(name); n.ManagementState != structs.NodeDrained {
			t.Fatalf("node %s is %s after its drain, want drained", name, n.ManagementState)
		}
	}
	if s.fsm.Err() != nil {
		t.Fatalf("state machine halted: %v", s.fsm.Err())
	}
}

// TestDisksMustLieUnderStorageRoots: --storage-root decides which disks a
// VM may have; the server's own data dir is never one, even under a root.
func TestDisksMustLieUnderStorageRoots(t *testing.T) {
	root := t.TempDir()
	var dataDir string
	s, base := devServerWith(t, func(c *Config) {
		c.StorageRoots = []string{root, "/dev/chime-san"}
		c.DataDir = filepath.Join(root, "chime-data") // a careless layout: the data dir under a root
		dataDir = c.DataDir
	})
	c := api.NewClient(base)
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		disks []string
		ok    bool
	}{
		{"under a root", []string{root + "/a.qcow2"}, true},
		{"a LUN under a device root", []string{"/dev/chime-san/lun1"}, true},
		{"the default root is replaced", []string{"/var/lib/chime/images/b.qcow2"}, false},
		{"another device", []string{"/dev/sdb"}, false},
		{"the server's data dir", []string{dataDir + "/state.db"}, false},
		{"one good, one bad", []string{root + "/c.qcow2", "/etc/passwd"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := s.fsm.VMs()
			_, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "vm-" + strconv.Itoa(len(before)), VCPUs: 1, Memory: 64, Disks: tt.disks})
			after, _ := s.fsm.VMs()
			if tt.ok {
				if err != nil || len(after) != len(before)+1 {
					t.Fatalf("create = %v, want ok", err)
				}
				return
			}
			var e *api.Error
			if !errors.As(err, &e) || e.Status != 400 || e.Field != "disks" {
				t.Fatalf("create = %v, want 400 naming disks", err)
			}
			if len(after) != len(before) {
				t.Fatal("a refused create wrote a VM")
			}
		})
	}
}

// TestSlowBodyIsCut: a client that sends its headers and then dribbles
// (or withholds) the body gets 408 after the body read timeout, and the
// request writes nothing; a request whose body arrived is not cut by it.
func TestSlowBodyIsCut(t *testing.T) {
	s, base := devServerWith(t, func(c *Config) { c.BodyReadTimeout = 300 * time.Millisecond })
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second)) // the test never hangs
	start := time.Now()
	// The headers promise 100 bytes; 15 come, and then nothing.
	if _, err := fmt.Fprintf(conn, "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":\"slow\","); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to the slow body: %v", err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e api.Error
	_ = json.Unmarshal(data, &e)
	if resp.StatusCode != http.StatusRequestTimeout || e.Field != "body" {
		t.Fatalf("status %d %s, want 408 naming body", resp.StatusCode, data)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the slow body was cut only after %s", d)
	}
	if vms, _ := s.fsm.VMs(); len(vms) != 0 {
		t.Fatalf("the cut request wrote %v", vms)
	}
	c := api.NewClient(base)
	// And a POST whose body arrived, then waits on Raft, is not cut either.
	if _, err := c.CreateVM(context.Background(), api.CreateVMRequest{Name: "fast", VCPUs: 1, Memory: 64}); err != nil {
		t.Fatal(err)
	}
}
