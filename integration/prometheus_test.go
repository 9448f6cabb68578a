package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	distprom "github.com/chime-ha/chime/dist/prometheus"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// promServer is a real Prometheus (Debian package prometheus) the test
// started on a loopback port.
type promServer struct {
	base string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *promServer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.Write(b)
}

func (p *promServer) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// startPrometheus runs prometheus with the configuration at cfg and its
// data in dataDir, on a free loopback port, until the test ends (SIGTERM,
// then SIGKILL after 10 s; the data dir goes with the test's temporary
// directory). It returns once /-/ready answers.
func startPrometheus(t *testing.T, cfg, dataDir string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if inCI() {
			t.Fatalf("prometheus missing under CI=true (scripts/install-deps.sh installs the Debian package prometheus): %v", err)
		}
		t.Skipf("prometheus not installed (apt-get install prometheus): %v", err)
	}
	port := ports.Free(t, "127.0.0.1", 1)[0]
	p := &promServer{base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	p.cmd = exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+dataDir,
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port), "--log.level=debug")
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(p.log()), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			t.Logf("--- last lines of the prometheus log ---\n%s", strings.Join(lines, "\n"))
		}
	})
	wait.For(t, 60*time.Second, "prometheus ready", func() (bool, string) {
		select {
		case <-done:
			return true, "exited"
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	select {
	case <-done:
		t.Fatalf("prometheus exited: %v\n%s", p.cmd.ProcessState, p.log())
	default:
	}
	return p
}

// get decodes the data of a Prometheus API answer (/api/v1/...).
func (p *promServer) get(path string, q url.Values, data any) error {
	u := p.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// promSample is one element of an instant vector.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [time, "value"]
}

func (s promSample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return -1
	}
	return v
}

// query runs an instant query through Prometheus's HTTP API.
func (p *promServer) query(expr string) ([]promSample, error) {
	var d struct {
		ResultType string       `json:"resultType"`
		Result     []promSample `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %s, want vector", expr, d.ResultType)
	}
	return d.Result, nil
}

// promAlert is one alert of /api/v1/alerts.
type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"` // pending, firing
}

func (p *promServer) alerts() ([]promAlert, error) {
	var d struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.get("/api/v1/alerts", nil, &d)
	return d.Alerts, err
}

// heartbeater sends one node's heartbeats every 500 ms, as its agent
// would, with the faults last set, until stopped.
type heartbeater struct {
	c      *api.Client
	node   string
	mu     sync.Mutex
	faults []string
	err    error // the last heartbeat's
	stop   chan struct{}
	done   chan struct{}
}

func startHeartbeats(t *testing.T, c *api.Client, r *api.RegisterResponse) *heartbeater {
	c.Token = ""
	c.SetCredentials(r.NodeID, r.Secret)
	h := &heartbeater{c: c, node: r.NodeID, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			h.mu.Lock()
			faults := h.faults
			h.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := h.c.Heartbeat(ctx, api.HeartbeatRequest{NodeID: h.node, Faults: faults, VMs: []structs.VMObservation{}})
			cancel()
			h.mu.Lock()
			h.err = err
			h.mu.Unlock()
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(h.halt)
	return h
}

func (h *heartbeater) setFaults(f ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = f
}

func (h *heartbeater) lastErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// halt stops the heartbeats and waits for the last one.
func (h *heartbeater) halt() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

// TestRealPrometheus runs a real Prometheus with the shipped
// configuration and rules (dist/prometheus, written by WriteConfig)
// against three real chime servers on mutual TLS with ACLs: Prometheus
// scrapes every server with a cli certificate and a token of role read,
// all three targets are up, the chime metrics queried back through
// Prometheus's HTTP API are what each server's API reports (the leader,
// the nodes by state), the rules file is loaded with every chime rule
// evaluated without error, and no alert fires; then one node falls
// silent, another reports a fault and a follower is killed, and the
// shipped rules fire ChimeNodeUnreachable and ChimeNodeError for those
// nodes and ChimeServerDown for that server, and nothing else.
func TestRealPrometheus(t *testing.T) {
	// The test registers two nodes and sends their heartbeats (every
	// 500 ms); a node silent for 3 × 3 s is pinged back (its agent address
	// refuses) and becomes unreachable.
	ss := newServerSet(t, "127.0.0.1", "--heartbeat-interval", "3s", "--missed-heartbeats", "3")
	leader := ss.leader(60 * time.Second)
	ss.bootstrapACL()
	read := ss.createToken("read")
	ctx := context.Background()
	regs := map[string]*api.RegisterResponse{}
	for _, name := range []string{"hv1", "hv2"} {
		r, err := ss.tls.agentClient(ss.addr(leader)).Register(ctx, api.RegisterRequest{ID: "00000000-0000-4000-8000-00000000000" + name[2:],
			Name: name, APIAddr: "127.0.0.1:1", VCPUs: 16, MemoryMiB: 1 << 16})
		if err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		regs[name] = r
	}
	hb := map[string]*heartbeater{}
	for name, r := range regs {
		hb[name] = startHeartbeats(t, ss.client(leader), r)
	}

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(read+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := distprom.WriteConfig(filepath.Join(dir, "etc"), distprom.Scrape{Targets: ss.addrs(),
		CAFile: ss.tls.cliF.CAFile, CertFile: ss.tls.cliF.CertFile, KeyFile: ss.tls.cliF.KeyFile, TokenFile: tokenFile,
		ServerName: tlsconf.RoleName(tlsconf.RoleServer, ss.tls.cli.Cluster()), Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	prom := startPrometheus(t, cfg, filepath.Join(dir, "data"))
	t.Logf("prometheus %s ready after %s", prom.base, time.Since(started).Round(time.Millisecond))

	// Every server is a target, and up: TLS and the token work.
	took := wait.For(t, 90*time.Second, "the three chime targets up", func() (bool, string) {
		var d struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := prom.get("/api/v1/targets", nil, &d); err != nil {
			return false, err.Error()
		}
		up, seen := 0, []string{}
		for _, tg := range d.ActiveTargets {
			if tg.Labels["job"] == distprom.JobName && tg.Health == "up" {
				up++
			}
			seen = append(seen, fmt.Sprintf("%s %s %q", tg.Labels["instance"], tg.Health, tg.LastError))
		}
		return up == 3 && len(d.ActiveTargets) == 3, strings.Join(seen, "; ")
	})
	t.Logf("all 3 targets up %s after prometheus was ready", took.Round(time.Millisecond))
	// What made them up: /metrics wants a token of role read (and the
	// certificate).
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: ss.tls.cli.ClientConfig(tlsconf.RoleServer)}}
	for _, tc := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {"not-a-token", http.StatusForbidden}, {ss.createToken("agent-join"), http.StatusForbidden}, {read, http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodGet, ss.addr(0)+"/metrics", nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("GET /metrics with token %.8q: %s, want %d", tc.token, resp.Status, tc.want)
		}
	}

	// chime_raft_leader through Prometheus names the leader the servers name.
	wait.For(t, 30*time.Second, "chime_raft_leader == 1 on the leader only", func() (bool, string) {
		res, err := prom.query("chime_raft_leader == 1")
		if err != nil {
			return false, err.Error()
		}
		if len(res) != 1 {
			return false, fmt.Sprintf("%d leaders: %v", len(res), res)
		}
		return res[0].Metric["instance"] == ss.addrs()[leader], "leader " + res[0].Metric["instance"]
	})
	t.Logf("chime_raft_leader through prometheus: 1 on %s (%s) only", ss.addrs()[leader], ss.names[leader])
	// chime_nodes through Prometheus, per server, is the node list each
	// server's API answers, counted by state.
	wantNodes := func(i int) (map[string]float64, error) {
		c := ss.client(i)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nodes, _, err := c.ListNodes(ctx, api.QueryOptions{})
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, n := range nodes {
			out[n.ManagementState+"/"+n.MonitorState]++
		}
		return out, nil
	}
	var last string
	wait.For(t, 30*time.Second, "chime_nodes in prometheus = each server's node list", func() (bool, string) {
		res, err := prom.query("chime_nodes")
		if err != nil {
			return false, err.Error()
		}
		got := map[string]map[string]float64{}
		for _, s := range res {
			in := s.Metric["instance"]
			if got[in] == nil {
				got[in] = map[string]float64{}
			}
			got[in][s.Metric["management_state"]+"/"+s.Metric["monitor_state"]] = s.value()
		}
		for i, addr := range ss.addrs() {
			want, err := wantNodes(i)
			if err != nil {
				return false, err.Error()
			}
			if fmt.Sprint(got[addr]) != fmt.Sprint(want) || want["enabled/normal"] != 2 {
				return false, fmt.Sprintf("%s: prometheus %v, API %v", addr, got[addr], want)
			}
		}
		last = fmt.Sprint(got)
		return true, ""
	})
	t.Logf("chime_nodes by server through prometheus: %s", last)

	// The rules file is loaded: every chime rule, evaluated without error.
	wait.For(t, 30*time.Second, "the chime rules loaded and evaluated", func() (bool, string) {
		var d struct {
			Groups []struct {
				Name  string `json:"name"`
				File  string `json:"file"`
				Rules []struct {
					Name      string `json:"name"`
					Type      string `json:"type"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := prom.get("/api/v1/rules", nil, &d); err != nil {
			return false, err.Error()
		}
		var ok, seen []string
		for _, g := range d.Groups {
			for _, r := range g.Rules {
				seen = append(seen, fmt.Sprintf("%s/%s %s %s %q", filepath.Base(g.File), r.Name, r.Type, r.Health, r.LastError))
				if filepath.Base(g.File) == distprom.RulesFile && r.Type == "alerting" && r.Health == "ok" {
					ok = append(ok, r.Name)
				}
			}
		}
		sort.Strings(ok)
		want := append([]string(nil), distprom.Alerts...)
		sort.Strings(want)
		return fmt.Sprint(ok) == fmt.Sprint(want), strings.Join(seen, "; ")
	})
	// No alert on the healthy cluster. (Before the first scrape of every
	// target ChimeRaftLeaderMissing may be pending for a second: absent,
	// or only followers scraped yet; its for: 1m never lets that fire.)
	wait.For(t, 30*time.Second, "no alert on the healthy cluster", func() (bool, string) {
		alerts, err := prom.alerts()
		if err != nil {
			return false, err.Error()
		}
		for _, a := range alerts {
			if a.State == "firing" {
				t.Fatalf("alert firing on a healthy cluster: %v", a.Labels)
			}
		}
		return len(alerts) == 0, fmt.Sprint(alerts)
	})

	// hv1 falls silent, hv2 reports a fault, a follower is killed.
	for name, h := range hb {
		if err := h.lastErr(); err != nil {
			t.Fatalf("%s's heartbeats: %v", name, err)
		}
	}
	hb["hv1"].halt()
	hb["hv2"].setFaults("disk I/O error: sda")
	victim := (leader + 1) % 3
	ss.procs[victim].kill()
	broke := time.Now()
	t.Logf("hv1 fell silent, hv2 reports a fault, %s (%s) was killed", ss.names[victim], ss.addrs()[victim])
	fired := map[string]time.Duration{}
	wait.For(t, 180*time.Second, "ChimeNodeUnreachable for hv1, ChimeNodeError for hv2 and ChimeServerDown for the killed server firing", func() (bool, string) {
		alerts, err := prom.alerts()
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, a := range alerts {
			seen = append(seen, fmt.Sprintf("%s%v %s", a.Labels["alertname"], a.Labels, a.State))
			switch name := a.Labels["alertname"]; {
			case a.State != "firing":
			case name == "ChimeNodeUnreachable" && a.Labels["node"] == "hv1" && a.Labels["node_id"] == regs["hv1"].NodeID,
				name == "ChimeNodeError" && a.Labels["node"] == "hv2" && a.Labels["node_id"] == regs["hv2"].NodeID,
				name == "ChimeServerDown" && a.Labels["instance"] == ss.addrs()[victim]:
				if _, ok := fired[name]; !ok {
					fired[name] = time.Since(broke)
				}
			}
		}
		if err := hb["hv2"].lastErr(); err != nil {
			return false, "hv2's heartbeats: " + err.Error()
		}
		return len(fired) == 3, strings.Join(seen, "; ")
	})
	t.Logf("firing after the break: ChimeNodeUnreachable %s (3 × 3 s of silence and the ping-back first), ChimeNodeError %s, ChimeServerDown %s (each rule has for: 1m)",
		fired["ChimeNodeUnreachable"].Round(time.Second), fired["ChimeNodeError"].Round(time.Second), fired["ChimeServerDown"].Round(time.Second))
	alerts, err := prom.alerts()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		switch a.Labels["alertname"] {
		case "ChimeNodeUnreachable", "ChimeNodeError", "ChimeServerDown":
			want := map[string]string{"ChimeNodeUnreachable": "hv1", "ChimeNodeError": "hv2"}[a.Labels["alertname"]]
			if a.Labels["node"] != want || a.Labels["instance"] != "" && a.Labels["instance"] != ss.addrs()[victim] {
				t.Errorf("unexpected alert %v (%s)", a.Labels, a.State)
			}
		default:
			t.Errorf("unexpected alert %v (%s): a follower down, a silent node and a node's fault break nothing else", a.Labels, a.State)
		}
	}
}
