package alarms

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

// receiver is a webhook receiver on loopback: it answers the scripted
// statuses first (then 200) and keeps every message it accepted.
type receiver struct {
	mu       sync.Mutex
	script   []int
	requests int
	msgs     []WebhookMessage
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if len(r.script) > 0 {
		code := r.script[0]
		r.script = r.script[1:]
		http.Error(w, "scripted", code)
		return
	}
	data, _ := io.ReadAll(req.Body)
	var m WebhookMessage
	if err := json.Unmarshal(data, &m); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.msgs = append(r.msgs, m)
}

func (r *receiver) received() ([]WebhookMessage, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]WebhookMessage(nil), r.msgs...), r.requests
}

// world is a real FSM driven by fsm.Direct on a manual clock (fsmtest),
// with the alarmer under test posting to rcv.
type world struct {
	*fsmtest.World
	t       *testing.T
	alarmer *Alarmer
	rcv     *receiver

	mu     sync.Mutex
	counts map[string]int // delivery results counted through CountDelivery
}

const externalURL = "http://chime.test:4646"

func newWorld(t *testing.T, script ...int) *world {
	t.Helper()
	w := &world{World: fsmtest.New(t), t: t, rcv: &receiver{script: script}, counts: map[string]int{}}
	hs := httptest.NewServer(w.rcv)
	t.Cleanup(hs.Close)
	w.alarmer = New(Config{State: w.FSM, Proposer: w.Direct, Clock: w.Clock, Webhooks: []string{hs.URL}, ExternalURL: externalURL,
		CountDelivery: func(result string) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.counts[result]++
		}})
	return w
}

func (w *world) step() {
	w.t.Helper()
	if err := w.alarmer.Step(context.Background()); err != nil {
		w.t.Fatalf("alarm step: %v", err)
	}
}

func (w *world) records() []fsm.AlarmRecord {
	w.t.Helper()
	recs, err := w.FSM.Alarms()
	if err != nil {
		w.t.Fatal(err)
	}
	return recs
}

// events counts the recorded events of one kind.
func (w *world) events(kind string) int {
	w.t.Helper()
	evs, err := w.FSM.Events(0, 10000)
	if err != nil {
		w.t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

func (w *world) count(result string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts[result]
}

func TestNodeUnreachableFiresOnceThenResolves(t *testing.T) {
	w := newWorld(t)
	node := w.RegisterNode("hv1")
	w.step()
	if msgs, _ := w.rcv.received(); len(msgs) != 0 || len(w.records()) != 0 {
		t.Fatalf("a normal node raised %d messages and %d records", len(msgs), len(w.records()))
	}

	w.Clock.Advance(time.Minute)
	since := w.Clock.Now()
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: node, State: structs.MonitorUnreachable, Reason: "test"})
	for i := 0; i < 3; i++ { // later passes see it recorded and delivered
		w.step()
		w.Clock.Advance(10 * time.Second)
	}
	msgs, _ := w.rcv.received()
	if len(msgs) != 1 {
		t.Fatalf("%d messages for one unreachable node, want 1: %+v", len(msgs), msgs)
	}
	m := msgs[0]
	if m.Version != "4" || m.Status != "firing" || len(m.Alerts) != 1 || m.ExternalURL != externalURL ||
		m.GroupKey != `{}:{alertname="NodeUnreachable"}` {
		t.Fatalf("firing message not in Alertmanager v4 form: %+v", m)
	}
	al := m.Alerts[0]
	if al.Labels["alertname"] != "NodeUnreachable" || al.Labels["severity"] != "critical" || al.Labels["node"] != "hv1" ||
		al.Labels["node_id"] != node || al.StartsAt != since.Format(time.RFC3339) || al.EndsAt != "0001-01-01T00:00:00Z" ||
		al.Annotations["summary"] != "node hv1 is unreachable" || al.GeneratorURL != externalURL+"/v1/alarms" || len(al.Fingerprint) != 16 {
		t.Fatalf("firing alert: %+v", al)
	}
	if n := w.events("alarm.firing"); n != 1 {
		t.Fatalf("firing transition recorded %d times, want once", n)
	}
	recs := w.records()
	if len(recs) != 1 || recs[0].Alarm.Status != "firing" || !recs[0].Delivered {
		t.Fatalf("records after delivery: %+v", recs)
	}
	if firing, err := w.alarmer.Firing(); err != nil || len(firing) != 1 || firing[0].Name != "NodeUnreachable" {
		t.Fatalf("Firing() = %+v, %v", firing, err)
	}

	// Back to normal: one resolution, stamped with the alarmer's clock.
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: node, State: structs.MonitorNormal, Reason: "test"})
	resolvedAt := w.Clock.Now()
	w.step()
	w.step()
	msgs, _ = w.rcv.received()
	if len(msgs) != 2 || msgs[1].Status != "resolved" || msgs[1].Alerts[0].EndsAt != resolvedAt.Format(time.RFC3339) ||
		msgs[1].Alerts[0].Fingerprint != al.Fingerprint {
		t.Fatalf("after the node is normal: %+v", msgs)
	}
	if n := w.events("alarm.resolved"); n != 1 {
		t.Fatalf("resolution recorded %d times, want once", n)
	}
	if recs := w.records(); len(recs) != 0 {
		t.Fatalf("records left after a delivered resolution: %+v", recs)
	}
	if firing, err := w.alarmer.Firing(); err != nil || len(firing) != 0 {
		t.Fatalf("Firing() after resolution = %+v, %v", firing, err)
	}
	if got := w.count(DeliveryDelivered); got != 2 {
		t.Fatalf("%d deliveries counted, want 2", got)
	}
}

func TestDeliveryRetries(t *testing.T) {
	tests := []struct {
		name         string
		script       []int // receiver answers before 200
		wantMessages int
		wantRequests int
		wantCounts   map[string]int
	}{
		{"accepted at once", nil, 1, 1, map[string]int{DeliveryDelivered: 1}},
		{"5xx is retried", []int{http.StatusServiceUnavailable}, 1, 2, map[string]int{DeliveryRetry: 1, DeliveryDelivered: 1}},
		{"4xx is dropped", []int{http.StatusBadRequest}, 0, 1, map[string]int{DeliveryRefused: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, tt.script...)
			node := w.RegisterNode("hv1")
			w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: node, State: structs.MonitorError, Faults: []string{"disk"}})
			w.step()
			msgs, requests := w.rcv.received()
			if len(msgs) != tt.wantMessages || requests != tt.wantRequests {
				t.Fatalf("%d messages in %d requests, want %d in %d", len(msgs), requests, tt.wantMessages, tt.wantRequests)
			}
			for _, r := range []string{DeliveryDelivered, DeliveryRefused, DeliveryRetry, DeliveryFailed} {
				if got := w.count(r); got != tt.wantCounts[r] {
					t.Fatalf("%s counted %d, want %d", r, got, tt.wantCounts[r])
				}
			}
			// Delivered or refused, the transition is done with: a later
			// pass sends nothing more.
			if recs := w.records(); len(recs) != 1 || !recs[0].Delivered {
				t.Fatalf("records after the pass: %+v", recs)
			}
			w.step()
			if _, again := w.rcv.received(); again != requests {
				t.Fatalf("a second pass sent %d more requests", again-requests)
			}
		})
	}
}
