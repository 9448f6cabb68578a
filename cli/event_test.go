package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server"
	"github.com/chime-ha/chime/integration/ports"
)

// runOut runs the command line and returns what it printed.
func runOut(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	old := stdout
	stdout = &out
	defer func() { stdout = old }()
	if err := App().RunContext(context.Background(), append([]string{"chime"}, args...)); err != nil {
		t.Fatalf("chime %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

// devServer starts a one-server --dev cluster, with what opts change in
// its configuration, and returns its API URL.
func devServer(t *testing.T, opts ...func(*server.Config)) string {
	t.Helper()
	p := ports.Free(t, "127.0.0.1", 3)
	cfg := server.DefaultConfig()
	cfg.Dev, cfg.Name, cfg.DataDir = true, "dev", filepath.Join(t.TempDir(), "dev")
	cfg.APIPort, cfg.RaftPort, cfg.GossipPort = p[0], p[1], p[2]
	cfg.GossipProfile, cfg.RaftTimeScale = "local", 0.25
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn})
	for _, o := range opts {
		o(&cfg)
	}
	s, err := server.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	return cfg.APIURL()
}

// `chime event list --audit` prints the audit log (a VM creation, by an
// anonymous caller on a --dev server), and `chime event list` leaves it out.
func TestEventListAudit(t *testing.T) {
	addr := devServer(t)
	cl := api.NewClient(addr)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := cl.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("create VM: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var audit string
	for {
		audit = runOut(t, "event", "list", "--audit", "--address", addr)
		if strings.Contains(audit, "POST    /v1/vms ") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(audit, "anonymous") || !strings.Contains(audit, "POST    /v1/vms ") || !strings.Contains(audit, " 201") {
		t.Fatalf("event list --audit:\n%s\nwant the VM creation by anonymous, 201", audit)
	}
	plain := runOut(t, "event", "list", "--address", addr, "-o", "json")
	if !strings.Contains(plain, "vm.created") || strings.Contains(plain, `"audit"`) {
		t.Fatalf("event list:\n%s\nwant vm.created and no audit event", plain)
	}
	t.Logf("audit log:\n%s", audit)
}
