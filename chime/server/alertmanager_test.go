package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// alertmanagerBinary is where Debian's prometheus-alertmanager package
// puts the binary (scripts/install-deps.sh installs it).
const alertmanagerBinary = "/usr/bin/prometheus-alertmanager"

// amReceiver is the webhook receiver the real Alertmanager notifies: it
// keeps every notification.
type amReceiver struct {
	mu   sync.Mutex
	msgs []alarms.WebhookMessage
}

func (r *amReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	data, _ := io.ReadAll(req.Body)
	var m alarms.WebhookMessage
	if err := json.Unmarshal(data, &m); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

// find returns the first notification of the NodeError group with status
// and at least n alerts of that status.
func (r *amReceiver) find(status string, n int) (alarms.WebhookMessage, bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var seen []string
	for _, m := range r.msgs {
		k := 0
		for _, a := range m.Alerts {
			if a.Status == status && a.Labels["alertname"] == "NodeError" {
				k++
			}
		}
		seen = append(seen, fmt.Sprintf("%s(%s,%d alerts)", m.GroupLabels["alertname"], m.Status, len(m.Alerts)))
		if m.Status == status && m.GroupLabels["alertname"] == "NodeError" && k >= n {
			return m, true, ""
		}
	}
	return alarms.WebhookMessage{}, false, "notifications so far: " + strings.Join(seen, " ")
}

// startAlertmanager runs the real Alertmanager on a loopback port, with a
// config that groups by alertname and cluster, waits 1 s, and notifies
// hook (resolutions too). It returns its base URL.
func startAlertmanager(t *testing.T, hook string) string {
	t.Helper()
	if _, err := os.Stat(alertmanagerBinary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing under CI=true (scripts/install-deps.sh installs prometheus-alertmanager): %v", alertmanagerBinary, err)
		}
		t.Skipf("%s not installed (apt-get install prometheus-alertmanager): %v", alertmanagerBinary, err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  resolve_timeout: 10s
route:
  receiver: chime-test
  group_by: [alertname, cluster]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: chime-test
    webhook_configs:
      - url: %q
        send_resolved: true
`, hook)
	cfgFile := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	port := ports.Free(t, "127.0.0.1", 1)[0]
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	var logs bytes.Buffer
	cmd := exec.Command(alertmanagerBinary, "--config.file="+cfgFile, "--storage.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port), "--cluster.listen-address=", "--log.level=debug")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", alertmanagerBinary, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("alertmanager log:\n%s", logs.String())
		}
	})
	wait.For(t, 30*time.Second, "alertmanager ready", func() (bool, string) {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return base
}

// TestRealAlertmanager: two nodes report a fault, the leader pushes two
// NodeError alerts to a real Alertmanager, which sends one grouped firing
// notification to the test's webhook; the faults clear, the leader sends
// endsAt, and Alertmanager notifies the group resolved.
func TestRealAlertmanager(t *testing.T) {
	rcv := &amReceiver{}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	amURL := startAlertmanager(t, hook.URL+"/hook")
	_, base := devServerWith(t, func(c *Config) {
		c.Alertmanagers, c.AlertmanagerResend, c.ClusterName = []string{amURL}, time.Second, "amtest"
	})
	c := api.NewClient(base)
	ctx := context.Background()
	heartbeat := func(r *api.RegisterResponse, faults []string) {
		t.Helper()
		agent := api.NewClient(base)
		agent.Node, agent.Secret = r.NodeID, r.Secret
		if _, err := agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: r.NodeID, Faults: faults, VMs: []structs.VMObservation{}}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := []*api.RegisterResponse{registerNode(t, c, "hv1"), registerNode(t, c, "hv2")}
	start := time.Now()
	for _, r := range nodes {
		heartbeat(r, []string{"disk I/O error: sda"})
	}
	var firing alarms.WebhookMessage
	wait.For(t, 60*time.Second, "grouped firing notification with both NodeError alerts", func() (bool, string) {
		m, ok, why := rcv.find("firing", 2)
		firing = m
		return ok, why
	})
	t.Logf("firing notification after %s: %d alerts, groupKey %s", time.Since(start).Round(time.Millisecond), len(firing.Alerts), firing.GroupKey)
	if firing.GroupLabels["cluster"] != "amtest" || firing.CommonLabels["severity"] == "" {
		t.Fatalf("group labels %v, common labels %v: want cluster amtest and a severity", firing.GroupLabels, firing.CommonLabels)
	}
	names := map[string]bool{}
	for _, a := range firing.Alerts {
		names[a.Labels["node"]] = true
		if a.Annotations["summary"] == "" || !strings.HasPrefix(a.GeneratorURL, "http") {
			t.Fatalf("alert without summary or generatorURL: %+v", a)
		}
	}
	if !names["hv1"] || !names["hv2"] {
		t.Fatalf("firing alerts name nodes %v, want hv1 and hv2", names)
	}

	cleared := time.Now()
	for _, r := range nodes {
		heartbeat(r, nil)
	}
	wait.For(t, 60*time.Second, "resolved notification for both NodeError alerts", func() (bool, string) {
		_, ok, why := rcv.find("resolved", 2)
		return ok, why
	})
	t.Logf("resolved notification %s after the faults cleared", time.Since(cleared).Round(time.Millisecond))
}
