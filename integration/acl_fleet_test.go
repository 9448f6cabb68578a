package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// TestACLFleet runs the lab fleet with ACLs on (the default outside
// --dev; the harness bootstrapped them and gave the agents a join token):
// the CLI without a token and with a weaker one is refused; a registration
// without a join credential adds no node; a node registered with the join
// token cannot take, with a heartbeat that claims it adopted it, a VM that
// runs on another host (it stays placed and running there); a real
// node-local migration with the source's management link down is placed
// from the destination's report (the source's proof); and an agent
// restarted after its join token was deleted comes back: the deleted
// token joins nothing, and as a known node it re-registers with its node
// secret. (Its agent certificate is a join credential too since TLS is
// the default, so this step shows a deleted token does not break a
// restart; that a known node needs nothing but its secret is the
// endpoint test's, TestRegisterJoinCredential.)
func TestACLFleet(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	vm := f.createVM(t, "acl-web")
	src, _, _ := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	t.Logf("acl-web running on %s", f.lab.Hosts[src].Name)

	// The CLI: no token, then a read token.
	read := f.ss.createToken("read")
	t.Setenv("CHIME_TOKEN", "")
	if _, err := f.chime("node", "list"); err == nil || !strings.Contains(err.Error(), "ACL token missing") {
		t.Errorf("CLI without a token: %v, want refused (ACL token missing)", err)
	}
	t.Setenv("CHIME_TOKEN", read)
	if _, err := f.chime("node", "list"); err != nil {
		t.Errorf("node list with a read token: %v", err)
	}
	if _, err := f.chime("vm", "stop", "acl-web"); err == nil || !strings.Contains(err.Error(), "needs role operator") {
		t.Errorf("vm stop with a read token: %v, want refused (needs role operator)", err)
	}
	t.Setenv("CHIME_TOKEN", f.ss.token)

	// A registration without a join credential: 403, no node.
	anon := f.apiClient(0)
	anon.Token = ""
	rogue := api.RegisterRequest{ID: uuid.NewString(), Name: "rogue", APIAddr: "127.0.0.1:1", VCPUs: 64, MemoryMiB: 1 << 20}
	if _, err := anon.Register(ctx, rogue); api.StatusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), "join credential") {
		t.Fatalf("register without a join credential: %v, want 403 naming the join credential", err)
	}
	nodes, err := f.nodeList()
	if err != nil || len(nodes) != len(f.lab.Hosts) {
		t.Fatalf("nodes after the refused registration: %d (%v), want %d", len(nodes), err, len(f.lab.Hosts))
	}

	// A node registered with the join token claims the VM: nothing moves.
	joined := f.apiClient(0)
	joined.Token = f.joinToken
	reg, err := joined.Register(ctx, rogue)
	if err != nil {
		t.Fatalf("register with the join token: %v", err)
	}
	thief := f.apiClient(0)
	thief.Token = ""
	thief.SetCredentials(reg.NodeID, reg.Secret)
	before := f.showVM(t, vm.ID)
	obs := structs.VMObservation{VMID: vm.ID, State: structs.StateRunning, Reason: "migrated", Generation: before.Generation}
	for i := 0; i < 3; i++ {
		if _, err := thief.Heartbeat(ctx, api.HeartbeatRequest{NodeID: reg.NodeID, VMs: []structs.VMObservation{obs}, Adopted: []structs.VMObservation{obs}}); err != nil {
			t.Fatalf("the rogue node's heartbeat: %v", err)
		}
	}
	if _, err := thief.Heartbeat(ctx, api.HeartbeatRequest{NodeID: nodes[0].ID, VMs: []structs.VMObservation{}}); !errors.Is(err, structs.ErrForbidden) {
		t.Errorf("heartbeat for another node with the rogue's credentials: %v, want 403", err)
	}
	after := f.showVM(t, vm.ID)
	if after.NodeID != before.NodeID || after.Generation != before.Generation {
		t.Fatalf("the claim moved the VM: node %s gen %d → node %s gen %d", before.NodeID, before.Generation, after.NodeID, after.Generation)
	}
	if host, _, _ := f.waitRunningOnOneHost(t, vm.ID, 10*time.Second); host != src {
		t.Fatalf("acl-web runs on %s, want still %s", f.lab.Hosts[host].Name, f.lab.Hosts[src].Name)
	}
	if err := f.apiClient(0).RemoveNode(ctx, reg.NodeID); err != nil {
		t.Logf("remove the rogue node: %v", err)
	}

	// A node-local migration while the source's management link is down
	// (scenario 4): the source cannot tell the servers, the destination
	// reports the adoption with the source's proof from the announcement,
	// and that alone moves the placement (a claim without it only holds).
	d := (src + 1) % len(f.lab.Hosts)
	h, dest := f.lab.Hosts[src], f.lab.Hosts[d]
	lctx, lcancel := context.WithTimeout(ctx, 30*time.Second)
	if err := h.SetLink(lctx, lab.NetMgmt, false); err != nil {
		lcancel()
		t.Fatal(err)
	}
	lcancel()
	mctx, mcancel := context.WithTimeout(ctx, 3*time.Minute)
	out, err := h.Command(mctx, chimeBin, "agent", "migrate", "--interface", h.BizIf, "--uuid", vm.ID, "--dest", dest.BizIP,
		"--socket", filepath.Join(f.agentDir(src), "agent.sock")).CombinedOutput()
	mcancel()
	if err != nil {
		t.Fatalf("on %s: chime agent migrate: %v\n%s", h.Name, err, out)
	}
	took := wait.For(t, 90*time.Second, "the servers place acl-web on "+dest.Name+" from the destination's report", func() (bool, string) {
		got := f.showVM(t, vm.ID)
		return f.nodes[got.NodeID] == dest.Name && got.AdoptGeneration == before.Generation, fmt.Sprintf("on %s, adopt generation %d", f.nodes[got.NodeID], got.AdoptGeneration)
	})
	t.Logf("placed on %s %s after the migration, the source's management link still down", dest.Name, took.Round(100*time.Millisecond))
	evs, _, err := f.ss.clientAll().Events(ctx, 0, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	adopted := false
	for _, e := range evs {
		if e.VMID == vm.ID && e.Kind == "vm.adopted" {
			adopted = true
		}
		if e.VMID == vm.ID && e.Kind == "vm.local_migrated" {
			t.Fatalf("the source reported the migration with its management link down: %s", e.Message)
		}
	}
	if !adopted {
		t.Fatal("no vm.adopted event: the destination's report did not move the placement")
	}
	lctx, lcancel = context.WithTimeout(ctx, 30*time.Second)
	if err := h.SetLink(lctx, lab.NetMgmt, true); err != nil {
		lcancel()
		t.Fatal(err)
	}
	lcancel()
	f.waitNodesNormal(t, 2*time.Minute)
	if host, _, _ := f.waitRunningOnOneHost(t, vm.ID, 30*time.Second); host != d {
		t.Fatalf("acl-web runs on %s, want %s", f.lab.Hosts[host].Name, dest.Name)
	}

	// The join token deleted: a restarted agent (still sending it)
	// re-registers with its node secret, and its node is normal again.
	var toks []structs.ACLToken
	if err := f.chimeJSON(&toks, "acl", "token", "list"); err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		if tok.Role == structs.RoleAgentJoin {
			f.mustChime(t, "acl", "token", "delete", tok.AccessorID)
		}
	}
	f.killAgent(src)
	f.startAgent(src)
	wait.For(t, 60*time.Second, "the restarted agent registered and synced", func() (bool, string) {
		st, err := f.agentStatus(src)
		if err != nil {
			return false, err.Error()
		}
		return st.Registered && st.Synced, st.Servers.LastError
	})
	wait.For(t, 30*time.Second, "its node normal", func() (bool, string) {
		n, err := f.apiClient(0).GetNode(ctx, f.lab.Hosts[src].Name)
		if err != nil {
			return false, err.Error()
		}
		return n.MonitorState == structs.MonitorNormal, n.MonitorState
	})
	if host, _, _ := f.waitRunningOnOneHost(t, vm.ID, 30*time.Second); host != d {
		t.Fatalf("after the agent restart acl-web runs on %s, want %s", f.lab.Hosts[host].Name, dest.Name)
	}
}

func (f *fleet) showVM(t *testing.T, id string) structs.VM {
	t.Helper()
	var vm structs.VM
	if err := f.chimeJSON(&vm, "vm", "show", id); err != nil {
		t.Fatal(err)
	}
	return vm
}
