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
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/fsm"
)

// alarmer derives alarms from the replicated state and delivers their
// transitions (firing, resolved) to webhook receivers in the Prometheus
// Alertmanager webhook format (version 4).
type alarmer struct {
	s   *Server
	log hclog.Logger
}

func newAlarmer(s *Server) *alarmer {
	return &alarmer{s: s, log: s.log.Named("alarms")}
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
func deriveAlarms(nodes []structs.Node, tasks []structs.Task, now time.Time) []structs.Alarm {
	var out []structs.Alarm
	add := func(name, severity string, labels map[string]string, summary, desc string, since time.Time) {
		labels["alertname"], labels["severity"] = name, severity
		out = append(out, structs.Alarm{Fingerprint: fingerprint(labels), Name: name, Severity: severity, Labels: labels,
			Summary: summary, Description: desc, Status: "firing", StartsAt: since})
	}
	for _, n := range nodes {
		switch n.MonitorState {
		case structs.MonitorUnreachable:
			add("NodeUnreachable", "critical", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("node %s is unreachable", n.Name),
				"No heartbeat and the ping-back failed; its VMs may be down. See the runbook for a dead node.", n.StateSince)
		case structs.MonitorError:
			add("NodeError", "warning", map[string]string{"node": n.Name, "node_id": n.ID},
				fmt.Sprintf("node %s reports faults: %v", n.Name, n.Faults),
				"The agent reports faults; evacuate the node if they persist.", n.StateSince)
		}
	}
	names := map[string]string{}
	for _, n := range nodes {
		names[n.ID] = n.Name
	}
	for _, t := range tasks {
		if t.State != structs.TaskFailed || taskFailureSettled(t, tasks, now) {
			continue
		}
		labels := map[string]string{"task": t.ID, "kind": t.Kind}
		if t.NodeID != "" {
			labels["node"], labels["node_id"] = names[t.NodeID], t.NodeID
			if labels["node"] == "" {
				labels["node"] = t.NodeID
			}
		}
		if t.VMID != "" {
			labels["vm"] = t.VMID
		}
		add("TaskFailed", "warning", labels, fmt.Sprintf("%s task %s failed", t.Kind, t.ID), t.Error, t.Updated)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

// failedTaskAlarmFor is how long a failed task keeps its alarm firing
// unless a later task of the same kind on the same node or VM succeeds.
const failedTaskAlarmFor = 24 * time.Hour

// taskFailureSettled reports whether a failed task's alarm resolves: a
// later task of the same kind for the same node/VM succeeded, or it is old.
func taskFailureSettled(t structs.Task, tasks []structs.Task, now time.Time) bool {
	if !t.Updated.IsZero() && now.Sub(t.Updated) > failedTaskAlarmFor {
		return true
	}
	for _, o := range tasks {
		if o.CreateIndex > t.CreateIndex && o.Kind == t.Kind && o.State == structs.TaskSucceeded &&
			o.NodeID == t.NodeID && o.VMID == t.VMID {
			return true
		}
	}
	return false
}

// firing lists the alarms recorded as firing in the replicated state.
func (a *alarmer) firing() []structs.Alarm {
	recs, _ := a.s.fsm.Alarms()
	out := []structs.Alarm{}
	for _, r := range recs {
		if r.Alarm.Status == "firing" {
			out = append(out, r.Alarm)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
}

// run records transitions and delivers them until ctx ends (leadership lost).
func (a *alarmer) run(ctx context.Context) {
	for {
		ch, _ := a.s.fsm.Changed()
		a.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(5 * time.Second):
		}
		// A burst of writes (thousands of registrations) costs one pass per
		// quarter second, not one per write.
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// step compares the alarms the state implies with the recorded ones,
// records each transition through Raft, then delivers every transition
// not yet recorded as delivered (also those a previous leader left).
func (a *alarmer) step(ctx context.Context) {
	nodes, err := a.s.fsm.Nodes()
	if err != nil {
		return
	}
	tasks, err := a.s.fsm.Tasks()
	if err != nil {
		return
	}
	recs, err := a.s.fsm.Alarms()
	if err != nil {
		return
	}
	now := time.Now().UTC()
	transitions := alarmTransitions(deriveAlarms(nodes, tasks, now), recs, now)
	for _, al := range transitions {
		if _, err := a.s.propose(ctx, "", fsm.CmdAlarm, fsm.AlarmTransition{Alarm: al}); err != nil {
			a.log.Warn("record alarm transition failed", "alarm", al.Name, "error", err)
			return
		}
	}
	recs, _ = a.s.fsm.Alarms()
	for _, r := range recs {
		if r.Delivered || ctx.Err() != nil {
			continue
		}
		al := r.Alarm
		a.log.Info("alarm", "name", al.Name, "status", al.Status, "summary", al.Summary)
		ok := true
		for _, url := range a.s.cfg.AlarmWebhook {
			ok = a.deliver(ctx, url, al) && ok
		}
		if ctx.Err() != nil {
			return
		}
		if !ok {
			a.log.Error("alarm not delivered to every receiver", "alarm", al.Name, "status", al.Status)
		}
		if _, err := a.s.propose(ctx, "", fsm.CmdAlarmSent, fsm.AlarmDelivered{Fingerprint: al.Fingerprint, Status: al.Status}); err != nil {
			a.log.Warn("record alarm delivery failed", "alarm", al.Name, "error", err)
		}
	}
}

// alarmTransitions is a pure function: the transitions that turn the
// recorded alarms into the current ones.
func alarmTransitions(current []structs.Alarm, recorded []fsm.AlarmRecord, now time.Time) []structs.Alarm {
	rec := map[string]structs.Alarm{}
	for _, r := range recorded {
		rec[r.Alarm.Fingerprint] = r.Alarm
	}
	var out []structs.Alarm
	seen := map[string]bool{}
	for _, al := range current {
		seen[al.Fingerprint] = true
		if prev, ok := rec[al.Fingerprint]; !ok || prev.Status != "firing" {
			out = append(out, al)
		}
	}
	for fp, prev := range rec {
		if !seen[fp] && prev.Status == "firing" {
			prev.Status, prev.EndsAt = "resolved", now
			out = append(out, prev)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out
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

func (a *alarmer) message(al structs.Alarm) webhookMessage {
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
func (a *alarmer) deliver(ctx context.Context, url string, al structs.Alarm) bool {
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
				return true
			}
			if resp.StatusCode/100 == 4 {
				a.s.met.alarmsSent.WithLabelValues("refused").Inc()
				a.log.Warn("alarm refused by receiver", "url", url, "status", resp.StatusCode)
				return false
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		a.s.met.alarmsSent.WithLabelValues("retry").Inc()
		a.log.Warn("alarm delivery failed, retrying", "url", url, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	a.s.met.alarmsSent.WithLabelValues("failed").Inc()
	a.log.Error("alarm delivery gave up", "url", url, "alarm", al.Name)
	return false
}
