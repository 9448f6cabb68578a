package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	distprom "github.com/chime-ha/chime/dist/prometheus"
	"github.com/chime-ha/chime/integration/wait"
)

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape reads base/metrics and parses every sample line (the format
// client_golang writes: name{k="v",...} value; no escaped quotes in
// chime's label values).
func scrape(t *testing.T, base string) []sample {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	var out []sample
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			t.Fatalf("scrape: line %q: %v", line, err)
		}
		s := sample{labels: map[string]string{}, value: v}
		head := line[:sp]
		name, rest, ok := strings.Cut(head, "{")
		s.name = name
		if ok {
			for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
				k, v, _ := strings.Cut(kv, "=")
				s.labels[k] = strings.Trim(v, `"`)
			}
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return out
}

// find returns the values of the samples named name whose labels include
// want.
func find(samples []sample, name string, want map[string]string) []float64 {
	var out []float64
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		out = append(out, s.value)
	}
	return out
}

// TestStateGauges: the gauges the alerting rules of dist/prometheus use
// follow the state. chime_node_monitor_state has one series per node and
// monitor state (1 for the node's state); chime_tasks reports every kind
// and state, zeros included, and counts a finished task.
func TestStateGauges(t *testing.T) {
	_, base := devServer(t)
	c := api.NewClient(base)
	ctx := context.Background()
	hv1, hv2 := registerNode(t, c, "hv1"), registerNode(t, c, "hv2")
	agent := api.NewClient(base)
	agent.Node, agent.Secret = hv2.NodeID, hv2.Secret
	if _, err := agent.Heartbeat(ctx, api.HeartbeatRequest{NodeID: hv2.NodeID, Faults: []string{"disk I/O error: sda"}, VMs: []structs.VMObservation{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NodeTask(ctx, hv1.NodeID, "evacuate", nil); err != nil {
		t.Fatal(err)
	}
	var got []sample
	wait.For(t, 30*time.Second, "hv2 error and the evacuate task succeeded in /metrics", func() (bool, string) {
		got = scrape(t, base)
		e := find(got, "chime_node_monitor_state", map[string]string{"node": "hv2", "state": structs.MonitorError})
		s := find(got, "chime_tasks", map[string]string{"kind": structs.TaskEvacuate, "state": structs.TaskSucceeded})
		return fmt.Sprint(e) == "[1]" && fmt.Sprint(s) == "[1]", fmt.Sprintf("hv2 error %v, evacuate succeeded %v", e, s)
	})

	tests := []struct {
		node, id, state string
		want            float64
	}{
		{"hv1", hv1.NodeID, structs.MonitorNormal, 1},
		{"hv1", hv1.NodeID, structs.MonitorUnreachable, 0},
		{"hv1", hv1.NodeID, structs.MonitorError, 0},
		{"hv2", hv2.NodeID, structs.MonitorNormal, 0},
		{"hv2", hv2.NodeID, structs.MonitorUnreachable, 0},
		{"hv2", hv2.NodeID, structs.MonitorError, 1},
	}
	for _, tc := range tests {
		v := find(got, "chime_node_monitor_state", map[string]string{"node": tc.node, "node_id": tc.id, "state": tc.state})
		if len(v) != 1 || v[0] != tc.want {
			t.Errorf("chime_node_monitor_state{node=%q,state=%q} = %v, want [%v]", tc.node, tc.state, v, tc.want)
		}
	}
	if n := len(find(got, "chime_node_monitor_state", nil)); n != 6 {
		t.Errorf("%d chime_node_monitor_state series, want 6 (2 nodes × 3 states)", n)
	}
	total := 0.0
	for _, k := range taskKinds {
		for _, st := range taskStates {
			v := find(got, "chime_tasks", map[string]string{"kind": k, "state": st})
			if len(v) != 1 {
				t.Errorf("chime_tasks{kind=%q,state=%q}: %v, want one series", k, st, v)
				continue
			}
			total += v[0]
		}
	}
	if total != 1 {
		t.Errorf("chime_tasks sum to %v, want 1 (the evacuate)", total)
	}
	if v := find(got, "chime_nodes", map[string]string{"management_state": "disabled", "monitor_state": structs.MonitorNormal}); fmt.Sprint(v) != "[1]" {
		t.Errorf("chime_nodes{disabled,normal} = %v, want [1] (hv1, evacuated)", v)
	}
	t.Logf("%d samples scraped", len(got))
	rulesSelectExported(t, got)
}

// rulesSelectExported checks that every chime_ selector of the shipped
// alerting rules (dist/prometheus/chime-rules.yml) matches a sample the
// server exports: a rule over a misspelt metric or label never fires,
// and promtool cannot tell.
func rulesSelectExported(t *testing.T, samples []sample) {
	t.Helper()
	rules, err := distprom.File(distprom.RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	sel := regexp.MustCompile(`(chime_[a-z_]+)(?:\{([^}]*)\})?`)
	pair := regexp.MustCompile(`([a-z_]+)="([^"]*)"`)
	n := 0
	for _, m := range sel.FindAllSubmatch(rules, -1) {
		want := map[string]string{}
		for _, p := range pair.FindAllSubmatch(m[2], -1) {
			want[string(p[1])] = string(p[2])
		}
		if len(find(samples, string(m[1]), want)) == 0 {
			t.Errorf("%s selects %s%v: no such sample in /metrics", distprom.RulesFile, m[1], want)
		}
		n++
	}
	if n < 6 {
		t.Errorf("found %d chime_ selectors in %s: is the regexp still right?", n, distprom.RulesFile)
	}
	t.Logf("%d chime_ selectors of %s match exported samples", n, distprom.RulesFile)
}
