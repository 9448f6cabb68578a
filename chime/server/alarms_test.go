package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
)

func TestAlarmTransitions(t *testing.T) {
	now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	a := structs.Alarm{Fingerprint: "aaaa", Status: "firing", Name: "NodeUnreachable"}
	b := structs.Alarm{Fingerprint: "bbbb", Status: "firing", Name: "NodeError"}
	tests := []struct {
		name     string
		current  []structs.Alarm
		recorded []fsm.AlarmRecord
		want     map[string]string // fingerprint → status of the transition
	}{
		{"nothing", nil, nil, map[string]string{}},
		{"new alarm fires", []structs.Alarm{a}, nil, map[string]string{"aaaa": "firing"}},
		{"still firing: no transition", []structs.Alarm{a}, []fsm.AlarmRecord{{Alarm: a, Delivered: true}}, map[string]string{}},
		{"still firing, undelivered: no new transition", []structs.Alarm{a}, []fsm.AlarmRecord{{Alarm: a}}, map[string]string{}},
		{"condition cleared: resolves", nil, []fsm.AlarmRecord{{Alarm: a, Delivered: true}}, map[string]string{"aaaa": "resolved"}},
		{"one clears, one fires", []structs.Alarm{b}, []fsm.AlarmRecord{{Alarm: a, Delivered: true}}, map[string]string{"aaaa": "resolved", "bbbb": "firing"}},
		{"fires again after a resolution", []structs.Alarm{a}, []fsm.AlarmRecord{{Alarm: structs.Alarm{Fingerprint: "aaaa", Status: "resolved"}}}, map[string]string{"aaaa": "firing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			for _, al := range alarmTransitions(tt.current, tt.recorded, now) {
				got[al.Fingerprint] = al.Status
				if al.Status == "resolved" && !al.EndsAt.Equal(now) {
					t.Errorf("resolved alarm has endsAt %v", al.EndsAt)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("transitions %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("transitions %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestDeriveAlarmsFingerprintsAreStable(t *testing.T) {
	n := []structs.Node{{ID: "n1", Name: "hv1", MonitorState: structs.MonitorUnreachable}, {ID: "n2", Name: "hv2", MonitorState: structs.MonitorNormal},
		{ID: "n3", Name: "hv3", MonitorState: structs.MonitorError, Faults: []string{"disk"}}}
	now := time.Now()
	first := deriveAlarms(n, nil, now)
	second := deriveAlarms(n, nil, now)
	if len(first) != 2 {
		t.Fatalf("%d alarms, want 2 (unreachable and error)", len(first))
	}
	hex16 := regexp.MustCompile(`^[0-9a-f]{16}$`)
	for i := range first {
		if first[i].Fingerprint != second[i].Fingerprint || !hex16.MatchString(first[i].Fingerprint) {
			t.Fatalf("fingerprint %q not stable 16-hex", first[i].Fingerprint)
		}
		for _, l := range []string{"alertname", "severity", "node"} {
			if first[i].Labels[l] == "" {
				t.Fatalf("alarm %s lacks label %s", first[i].Name, l)
			}
		}
	}
}

// receiver is a webhook receiver run by the test.
type receiver struct {
	mu   sync.Mutex
	msgs []webhookMessage
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
	var m webhookMessage
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
	waitFor(t, 20*time.Second, func() string {
		if got := rcv.statuses(); len(got) != 1 || got[0] != "NodeError:firing" {
			return "received " + joinOr(got)
		}
		return ""
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
	waitFor(t, 20*time.Second, func() string {
		if got := rcv.statuses(); len(got) != 2 || got[1] != "NodeError:resolved" {
			return "received " + joinOr(got)
		}
		return ""
	})
	if al, _ := c.Alarms(ctx); len(al) != 0 {
		t.Fatalf("alarm list shows %d alarms after resolution, want 0", len(al))
	}
	// The delivery is recorded right after the receiver answered.
	waitFor(t, 10*time.Second, func() string {
		if recs, _ := s.fsm.Alarms(); len(recs) != 0 {
			return fmt.Sprintf("%d alarm records left after a delivered resolution", len(recs))
		}
		return ""
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

func TestFailedTaskAlarmResolves(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	nodes := []structs.Node{{ID: "n1", Name: "hv1", MonitorState: structs.MonitorNormal}}
	failed := structs.Task{ID: "t1", Kind: structs.TaskEvacuate, NodeID: "n1", State: structs.TaskFailed, CreateIndex: 5, Updated: now.Add(-time.Hour)}
	later := structs.Task{ID: "t2", Kind: structs.TaskEvacuate, NodeID: "n1", State: structs.TaskSucceeded, CreateIndex: 9, Updated: now}
	if al := deriveAlarms(nodes, []structs.Task{failed}, now); len(al) != 1 || al[0].Labels["node"] != "hv1" {
		t.Fatalf("failed task: %+v, want one TaskFailed labelled with the node name", al)
	}
	if al := deriveAlarms(nodes, []structs.Task{failed, later}, now); len(al) != 0 {
		t.Fatalf("failed task superseded by a success still fires: %+v", al)
	}
	if al := deriveAlarms(nodes, []structs.Task{failed}, now.Add(25*time.Hour)); len(al) != 0 {
		t.Fatalf("day-old failed task still fires: %+v", al)
	}
}
