package alarms

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/fsmtest"
)

// fakeAM is an httptest stand-in for Alertmanager's POST /api/v2/alerts:
// it refuses any other method, path or content type, and keeps each body.
type fakeAM struct {
	mu    sync.Mutex
	posts [][]PostableAlert
}

func (f *fakeAM) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/prefix/api/v2/alerts" || req.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "want POST /prefix/api/v2/alerts application/json, got "+req.Method+" "+req.URL.Path, http.StatusNotFound)
		return
	}
	data, _ := io.ReadAll(req.Body)
	var alerts []PostableAlert
	if err := json.Unmarshal(data, &alerts); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.posts = append(f.posts, alerts)
}

func (f *fakeAM) got() [][]PostableAlert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]PostableAlert(nil), f.posts...)
}

func TestAlertmanagerWireFormat(t *testing.T) {
	am := &fakeAM{}
	hs := httptest.NewServer(am)
	defer hs.Close()
	w := fsmtest.New(t)
	const resend = 50 * time.Millisecond
	a := New(Config{State: w.FSM, Proposer: w.Direct, Clock: w.Clock, ExternalURL: externalURL,
		Alertmanagers: []string{hs.URL + "/prefix/"}, Resend: resend, Cluster: "lab"})
	node := w.RegisterNode("hv1")
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: node, State: structs.MonitorUnreachable, Reason: "test"})
	since := w.Clock.Now()
	if err := a.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	posts := am.got()
	if len(posts) != 1 || len(posts[0]) != 1 {
		t.Fatalf("posts after firing: %+v, want one with one alert", posts)
	}
	p := posts[0][0]
	wantLabels := map[string]string{"alertname": "NodeUnreachable", "severity": "critical", "node": "hv1", "node_id": node, "cluster": "lab"}
	for k, v := range wantLabels {
		if p.Labels[k] != v {
			t.Fatalf("label %s = %q, want %q (labels %v)", k, p.Labels[k], v, p.Labels)
		}
	}
	starts, err1 := time.Parse(time.RFC3339Nano, p.StartsAt)
	ends, err2 := time.Parse(time.RFC3339Nano, p.EndsAt)
	if err1 != nil || err2 != nil || !starts.Equal(since) || !ends.Equal(w.Clock.Now().Add(4*resend)) {
		t.Fatalf("firing startsAt %s endsAt %s (%v %v), want %s and now+4×resend", p.StartsAt, p.EndsAt, err1, err2, since)
	}
	if p.Annotations["summary"] != "node hv1 is unreachable" || p.GeneratorURL != externalURL+"/v1/alarms" {
		t.Fatalf("firing alert: %+v", p)
	}

	// Run re-sends the firing alert each interval (real ticker, short).
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(am.got()) < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	posts = am.got()
	if len(posts) < 4 {
		t.Fatalf("%d posts in 10 s with a %s re-send, want at least 4", len(posts), resend)
	}
	for i, ps := range posts[1:] {
		if len(ps) != 1 || ps[0].Labels["alertname"] != "NodeUnreachable" || ps[0].StartsAt != p.StartsAt {
			t.Fatalf("re-send %d: %+v", i+1, ps)
		}
	}
	t.Logf("%d posts: 1 transition + %d re-sends", len(posts), len(posts)-1)

	// Resolved: one post whose endsAt is the resolution.
	n := len(posts)
	w.Clock.Advance(time.Minute)
	w.Propose(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: node, State: structs.MonitorNormal, Reason: "test"})
	if err := a.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	posts = am.got()
	if len(posts) != n+1 {
		t.Fatalf("%d posts after resolution, want %d", len(posts), n+1)
	}
	r := posts[n][0]
	if ends, err := time.Parse(time.RFC3339Nano, r.EndsAt); err != nil || !ends.Equal(w.Clock.Now()) || r.Labels["alertname"] != "NodeUnreachable" {
		t.Fatalf("resolved alert %+v, want endsAt %s", r, w.Clock.Now())
	}
}

func TestAlertmanagerClientCA(t *testing.T) {
	am := &fakeAM{}
	hs := httptest.NewTLSServer(am)
	defer hs.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, []byte("no pem here"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		caFile  string
		wantErr bool // AlertmanagerClient fails
		wantOK  bool // the post is taken
	}{
		{"system roots do not trust the test CA", "", false, false},
		{"the CA file does", ca, false, true},
		{"a file without PEM is refused", empty, true, false},
		{"a missing file is refused", filepath.Join(t.TempDir(), "nope"), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := AlertmanagerClient(tt.caFile)
			if (err != nil) != tt.wantErr {
				t.Fatalf("AlertmanagerClient(%q) error %v, want error %v", tt.caFile, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			w := fsmtest.New(t)
			a := New(Config{State: w.FSM, Proposer: w.Direct, Clock: w.Clock, AlertmanagerClient: c,
				Alertmanagers: []string{hs.URL + "/prefix"}})
			al := structs.Alarm{Name: "NodeError", Severity: "warning", Status: "firing", StartsAt: w.Clock.Now(),
				Labels: map[string]string{"node": "hv1"}}
			if ok := a.pushAlertmanagers(context.Background(), []structs.Alarm{al}, 1); ok != tt.wantOK {
				t.Fatalf("push ok = %v, want %v", ok, tt.wantOK)
			}
		})
	}
}
