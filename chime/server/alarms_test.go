package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/wait"

	"github.com/chime-ha/chime/chime/api"
)

// receiver is a webhook receiver run by the test.
type receiver struct {
	mu   sync.Mutex
	msgs []alarms.WebhookMessage
	fail int // answer 500 to this many requests first
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		http.Error(w, "try later", http.StatusInternalServerError)
		return
	}
	data, _ := io.ReadAll(req.Body)
	var m alarms.WebhookMessage
	if err := json.Unmarshal(data, &m); err == nil {
		r.msgs = append(r.msgs, m)
	}
}

func (r *receiver) statuses() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.msgs {
		out = append(out, m.Alerts[0].Labels["alertname"]+":"+m.Status)
	}
	return out
}

func TestAlarmDeliveredOncePerTransitionWithRetries(t *testing.T) {
	rcv := &receiver{fail: 2}
	hs := httptest.NewServer(rcv)
	defer hs.Close()
	s, base := devServerWith(t, func(c *Config) { c.AlarmWebhook = []string{hs.URL} })
	c := api.NewClient(base)
	r := registerNode(t, c, "hv1")
	ctx := context.Background()
	// The agent reports a fault: error, one firing alarm (after two 500s).
	agent := api.NewClient(base)
	agent.Node, agent.Secret = r.NodeID, r.Secret
	if _, err := agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: r.NodeID, Faults: []string{"disk I/O error: sda"}, VMs: []structs.VMObservation{}}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, "one NodeError firing delivered", func() (bool, string) {
		if got := rcv.statuses(); len(got) != 1 || got[0] != "NodeError:firing" {
			return false, "received " + joinOr(got)
		}
		return true, ""
	})
	rcv.mu.Lock()
	m := rcv.msgs[0]
	rcv.mu.Unlock()
	if m.Version != "4" || m.Alerts[0].EndsAt != "0001-01-01T00:00:00Z" || m.Alerts[0].Labels["severity"] == "" || m.Alerts[0].Annotations["summary"] == "" {
		t.Fatalf("webhook body not in Alertmanager format: %+v", m)
	}
	if al, _ := c.Alarms(ctx); len(al) != 1 {
		t.Fatalf("alarm list shows %d alarms, want 1", len(al))
	}
	// More heartbeats with the same fault: no new delivery.
	for i := 0; i < 3; i++ {
		agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: r.NodeID, Faults: []string{"disk I/O error: sda"}, VMs: []structs.VMObservation{}})
	}
	time.Sleep(500 * time.Millisecond)
	// Fault cleared: one resolved delivery.
	if _, err := agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: r.NodeID, VMs: []structs.VMObservation{}}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, "NodeError resolved delivered", func() (bool, string) {
		if got := rcv.statuses(); len(got) != 2 || got[1] != "NodeError:resolved" {
			return false, "received " + joinOr(got)
		}
		return true, ""
	})
	if al, _ := c.Alarms(ctx); len(al) != 0 {
		t.Fatalf("alarm list shows %d alarms after resolution, want 0", len(al))
	}
	// The delivery is recorded right after the receiver answered.
	wait.For(t, 10*time.Second, "resolved alarm record forgotten", func() (bool, string) {
		if recs, _ := s.fsm.Alarms(); len(recs) != 0 {
			return false, fmt.Sprintf("%d alarm records left after a delivered resolution", len(recs))
		}
		return true, ""
	})
}

func joinOr(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	out := ""
	for _, x := range s {
		out += x + " "
	}
	return out
}
