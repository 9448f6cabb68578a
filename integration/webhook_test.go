package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// alertMessage is the part of an Alertmanager webhook body tests read.
type alertMessage struct {
	Version string `json:"version"`
	Status  string `json:"status"`
	Alerts  []struct {
		Status      string            `json:"status"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		StartsAt    string            `json:"startsAt"`
		EndsAt      string            `json:"endsAt"`
		Fingerprint string            `json:"fingerprint"`
	} `json:"alerts"`
}

// receivedAlert is one delivery as the receiver saw it.
type receivedAlert struct {
	At     time.Time
	Name   string // alertname
	Node   string // node label
	Status string // firing or resolved
	Msg    alertMessage
}

// webhookReceiver is an alarm receiver run by a test, on loopback (the
// servers run in the root namespace).
type webhookReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []receivedAlert
}

func newWebhookReceiver(t *testing.T) *webhookReceiver {
	t.Helper()
	w := &webhookReceiver{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var m alertMessage
		if err := json.Unmarshal(data, &m); err != nil || len(m.Alerts) == 0 {
			http.Error(rw, "bad body", http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		w.got = append(w.got, receivedAlert{At: time.Now(), Name: m.Alerts[0].Labels["alertname"], Node: m.Alerts[0].Labels["node"], Status: m.Status, Msg: m})
		w.mu.Unlock()
	}))
	t.Cleanup(w.srv.Close)
	return w
}

// URL is the receiver's address for --alarm-webhook.
func (w *webhookReceiver) URL() string { return w.srv.URL }

// find returns the first delivery of alertname for node with status after t0.
func (w *webhookReceiver) find(name, node, status string, t0 time.Time) (receivedAlert, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.got {
		if a.Name == name && a.Node == node && a.Status == status && !a.At.Before(t0) {
			return a, true
		}
	}
	return receivedAlert{}, false
}

// count counts deliveries of alertname for node with status.
func (w *webhookReceiver) count(name, node, status string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.got {
		if a.Name == name && a.Node == node && a.Status == status {
			n++
		}
	}
	return n
}

func (w *webhookReceiver) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := ""
	for _, a := range w.got {
		s += fmt.Sprintf("%s %s/%s %s; ", a.At.Format("15:04:05.000"), a.Name, a.Node, a.Status)
	}
	if s == "" {
		return "nothing received"
	}
	return s
}
