package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
)

// alarmer derives alarms from the replicated state and delivers their
// transitions (firing, resolved) to webhook receivers in the Prometheus
// Alertmanager webhook format (version 4).
type alarmer struct {
	s   *Server
	log hclog.Logger

	mu   sync.Mutex
	sent map[string]api.Alarm // fingerprint → last status delivered by this leader
}

func newAlarmer(s *Server) *alarmer {
	return &alarmer{s: s, log: s.log.Named("alarms"), sent: map[string]api.Alarm{}}
}

func fingerprint(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, labels[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// deriveAlarms is a pure function of the state: what is firing now.
func deriveAlarms(nodes []api.Node, tasks []api.Task) []api.Alarm {
	var out []api.Alarm
	add := func(name, severity string, labels map[string]string, summary, desc string, since time.Time) {
		labels["alertname"], labels["severity"] = name, severity
		out = append(out, api.Alarm{Fingerprint: fingerprint(labels), Name: name, Severity: severity, Labels: labels,
			Summary: summary, Description: desc, Status: "firing", StartsAt: since})
	}
	for _, n := range nodes {
		switch n.MonitorState {
		case api.MonitorUnreachable:
			add("NodeUnreachable", "critical", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("node %s is unreachable", n.Name),
				"No heartbeat and the ping-back failed; its VMs may be down. See the runbook for a dead node.", n.StateSince)
		case api.MonitorError:
			add("NodeError", "warning", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("node %s reports faults: %v", n.Name, n.Faults),
				"The agent reports faults; evacuate the node if they persist.", n.StateSince)
		}
	}
	for _, t := range tasks {
		if t.State == api.TaskFailed {
			labels := map[string]string{"task": t.ID, "kind": t.Kind}
			if t.NodeID != "" {
				labels["node"] = t.NodeID
			}
			if t.VMID != "" {
				labels["vm"] = t.VMID
			}
			add("TaskFailed", "warning", labels, fmt.Sprintf("%s task %s failed", t.Kind, t.ID), t.Error, t.Updated)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

func (a *alarmer) firing() []api.Alarm {
	nodes, _ := a.s.fsm.Nodes()
	tasks, _ := a.s.fsm.Tasks()
	out := deriveAlarms(nodes, tasks)
	if out == nil {
		out = []api.Alarm{}
	}
	return out
}

// run delivers transitions until ctx ends (leadership lost).
func (a *alarmer) run(ctx context.Context) {
	for {
		ch, _ := a.s.fsm.Changed()
		a.deliverChanges(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(5 * time.Second):
		}
	}
}

func (a *alarmer) deliverChanges(ctx context.Context) {
	now := time.Now().UTC()
	cur := map[string]api.Alarm{}
	for _, al := range a.firing() {
		cur[al.Fingerprint] = al
	}
	var changes []api.Alarm
	a.mu.Lock()
	for fp, al := range cur {
		if prev, ok := a.sent[fp]; !ok || prev.Status != "firing" {
			changes = append(changes, al)
			a.sent[fp] = al
		}
	}
	for fp, prev := range a.sent {
		if _, still := cur[fp]; !still && prev.Status == "firing" {
			prev.Status, prev.EndsAt = "resolved", now
			changes = append(changes, prev)
			a.sent[fp] = prev
		}
	}
	a.mu.Unlock()
	for _, al := range changes {
		a.log.Info("alarm", "name", al.Name, "status", al.Status, "summary", al.Summary)
		for _, url := range a.s.cfg.AlarmWebhooks {
			a.deliver(ctx, url, al)
		}
	}
}

// webhookMessage is the Alertmanager webhook body (version "4").
type webhookMessage struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []webhookAlert    `json:"alerts"`
}

type webhookAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

func (a *alarmer) message(al api.Alarm) webhookMessage {
	ends := "0001-01-01T00:00:00Z"
	if al.Status == "resolved" {
		ends = al.EndsAt.UTC().Format(time.RFC3339)
	}
	ann := map[string]string{"summary": al.Summary, "description": al.Description}
	return webhookMessage{
		Version: "4", GroupKey: "{}:{alertname=\"" + al.Name + "\"}", Status: al.Status, Receiver: "chime",
		GroupLabels: map[string]string{"alertname": al.Name}, CommonLabels: al.Labels, CommonAnnotations: ann,
		ExternalURL: a.s.cfg.APIURL(),
		Alerts: []webhookAlert{{Status: al.Status, Labels: al.Labels, Annotations: ann,
			StartsAt: al.StartsAt.UTC().Format(time.RFC3339), EndsAt: ends,
			GeneratorURL: a.s.cfg.APIURL() + "/v1/alarms", Fingerprint: al.Fingerprint}},
	}
}

// deliver posts one alarm with retries and back-off: 2xx is delivered,
// 4xx is dropped (the receiver refuses it), 5xx and network errors retry.
func (a *alarmer) deliver(ctx context.Context, url string, al api.Alarm) {
	body, _ := json.Marshal(a.message(al))
	backoff := 500 * time.Millisecond
	for attempt := 1; attempt <= 8; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		req, _ := http.NewRequestWithContext(cctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				a.s.met.alarmsSent.WithLabelValues("delivered").Inc()
				return
			}
			if resp.StatusCode/100 == 4 {
				a.s.met.alarmsSent.WithLabelValues("refused").Inc()
				a.log.Warn("alarm refused by receiver", "url", url, "status", resp.StatusCode)
				return
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		a.s.met.alarmsSent.WithLabelValues("retry").Inc()
		a.log.Warn("alarm delivery failed, retrying", "url", url, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	a.s.met.alarmsSent.WithLabelValues("failed").Inc()
	a.log.Error("alarm delivery gave up", "url", url, "alarm", al.Name)
}
