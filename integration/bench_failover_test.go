package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// BenchmarkLeaderFailoverVsEtcd is issue 14's benchmark 3: the time from a
// kill -9 of the Raft leader to the first write the surviving cluster
// accepts, for chime (three real `chime server` processes on loopback,
// production Raft timing, mutual TLS; the write is a VM create sent by a
// client that retries on the two surviving servers) and for etcd (three
// `etcd` members on loopback, default timing; the write is a put through
// its HTTP/JSON gateway, retried the same way), in the same run,
// alternating, CHIME_BENCH_KILLS kills each (default 10, quick mode 3).
// It prints
//
//	BENCH14 failover chime p50=… p99=… max=… n=… etcd_p50=… … ratio_p50=… ratio_p99=…
//
// (ratio = chime / etcd). Plain `go test` never runs it:
//
//	go test -run '^$' -bench BenchmarkLeaderFailoverVsEtcd -benchtime 1x ./integration
func BenchmarkLeaderFailoverVsEtcd(b *testing.B) {
	for range b.N {
		benchChild(b, "TestBench14FailoverRun", "CHIME_BENCH14_FAILOVER", "1", 30*time.Minute)
	}
}

// TestBench14FailoverRun is BenchmarkLeaderFailoverVsEtcd's run (skipped
// unless the benchmark sets CHIME_BENCH14_FAILOVER).
func TestBench14FailoverRun(t *testing.T) {
	if os.Getenv("CHIME_BENCH14_FAILOVER") == "" {
		t.Skip("a run of BenchmarkLeaderFailoverVsEtcd (set by the benchmark)")
	}
	kills := benchCount(t, "CHIME_BENCH_KILLS", 3, 10)
	ss, ec := benchClusters(t)

	var chimeD, etcdD []time.Duration
	for k := range kills {
		d, killed := chimeFailover(t, ss, k)
		chimeD = append(chimeD, d)
		t.Logf("kill %d: chime %s (leader %s)", k+1, d.Round(time.Millisecond), ss.names[killed])
		d, ekilled := ec.failover(t, k)
		etcdD = append(etcdD, d)
		t.Logf("kill %d: etcd %s (leader %s)", k+1, d.Round(time.Millisecond), ec.names[ekilled])
	}
	r50 := nearestRank(chimeD, 50).Seconds() / nearestRank(etcdD, 50).Seconds()
	r99 := nearestRank(chimeD, 99).Seconds() / nearestRank(etcdD, 99).Seconds()
	fmt.Printf("BENCH14 failover chime %s %s ratio_p50=%.2f ratio_p99=%.2f\n",
		pctFields("", chimeD), pctFields("etcd_", etcdD), r50, r99)
}

// failoverWrite retries write every 20 ms (each try bounded by 1 s) until
// one succeeds, and returns the time since t0.
func failoverWrite(t *testing.T, t0 time.Time, what string, write func(ctx context.Context, try int) error) time.Duration {
	t.Helper()
	var last error
	for try := 0; time.Since(t0) < 60*time.Second; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := write(ctx, try)
		cancel()
		if err == nil {
			return time.Since(t0)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no write accepted within 60 s of the kill: %v", what, last)
	return 0
}

// chimeFailover kills chime's leader, measures, restarts it and waits
// until the three servers accept writes again.
func chimeFailover(t *testing.T, ss *serverSet, k int) (time.Duration, int) {
	t.Helper()
	l := ss.leader(60 * time.Second)
	var survivors []*api.Client
	for i := range ss.names {
		if i != l {
			c := ss.client(i)
			c.Retries = 0
			survivors = append(survivors, c)
		}
	}
	t0 := time.Now()
	t.Logf("chime kill %d of %s at %s", k+1, ss.names[l], t0.UTC().Format("15:04:05.000"))
	ss.procs[l].kill()
	d := failoverWrite(t, t0, "chime", func(ctx context.Context, try int) error {
		_, err := survivors[try%2].CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("fo-%d-%d", k, try), VCPUs: 1, Memory: 64})
		return err
	})
	ss.start(l)
	ss.settle(t)
	return d, l
}

// settle waits until a write through every server is accepted, then lets
// the restarted server's Raft follow for a few heartbeats.
func (ss *serverSet) settle(t *testing.T) {
	t.Helper()
	for i := range ss.names {
		n := 0
		wait.For(t, 60*time.Second, "a write through "+ss.names[i], func() (bool, string) {
			n++
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c := ss.client(i)
			c.Retries = 0
			_, err := c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("settle-%s-%d-%d", ss.names[i], time.Now().UnixNano(), n), VCPUs: 1, Memory: 64})
			if err != nil {
				return false, err.Error()
			}
			return true, ""
		})
	}
	time.Sleep(2 * time.Second)
}

// etcdCluster is three etcd members on loopback (default timing: 100 ms
// heartbeats, 1 s election timeout), data in temporary directories.
type etcdCluster struct {
	bin     string
	names   []string
	dirs    []string
	client  []int // client port
	peer    []int
	procs   []*exec.Cmd
	done    []chan struct{}
	logs    string
	initial string
	http    *http.Client
}

func newEtcdCluster(t *testing.T, bin string) *etcdCluster {
	t.Helper()
	ec := &etcdCluster{bin: bin, logs: t.TempDir(), http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	base := t.TempDir()
	p := ports.Free(t, "127.0.0.1", 6)
	var init []string
	for i := range 3 {
		ec.names = append(ec.names, fmt.Sprintf("e%d", i+1))
		ec.dirs = append(ec.dirs, filepath.Join(base, fmt.Sprintf("e%d", i+1)))
		ec.client = append(ec.client, p[2*i])
		ec.peer = append(ec.peer, p[2*i+1])
		init = append(init, fmt.Sprintf("e%d=http://127.0.0.1:%d", i+1, p[2*i+1]))
	}
	ec.initial = strings.Join(init, ",")
	ec.procs = make([]*exec.Cmd, 3)
	ec.done = make([]chan struct{}, 3)
	for i := range 3 {
		ec.start(t, i)
	}
	t.Cleanup(func() {
		for i := range ec.procs {
			ec.kill(i)
		}
	})
	return ec
}

func (ec *etcdCluster) start(t *testing.T, i int) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(ec.logs, ec.names[i]+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cu := fmt.Sprintf("http://127.0.0.1:%d", ec.client[i])
	pu := fmt.Sprintf("http://127.0.0.1:%d", ec.peer[i])
	cmd := exec.Command(ec.bin, "--name", ec.names[i], "--data-dir", ec.dirs[i],
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", ec.initial, "--initial-cluster-state", "new", "--initial-cluster-token", "bench14",
		"--logger", "zap")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start etcd %s: %v", ec.names[i], err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	ec.procs[i], ec.done[i] = cmd, done
}

// kill sends SIGKILL to member i's process group and waits for it.
func (ec *etcdCluster) kill(i int) {
	if ec.procs[i] == nil || ec.procs[i].Process == nil {
		return
	}
	_ = syscall.Kill(-ec.procs[i].Process.Pid, syscall.SIGKILL)
	<-ec.done[i]
}

// benchClusters starts benchmarks 3 and 4's two clusters on loopback:
// three real `chime server` processes (production Raft timing, mutual TLS,
// ACLs bootstrapped; logs in CHIME_BENCH_LOGS if set, e.g. to profile a
// run) and three etcd members, and waits for a leader in each. extra goes
// to every chime server's command line.
func benchClusters(t *testing.T, extra ...string) (*serverSet, *etcdCluster) {
	t.Helper()
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd not installed (Debian etcd-server, scripts/install-deps.sh): %v", err)
	}
	logs := os.Getenv("CHIME_BENCH_LOGS")
	if logs == "" {
		logs = t.TempDir()
	}
	ss := newServerSetOn(t, []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}, t.TempDir(), logs, extra...)
	ss.leader(60 * time.Second)
	ss.bootstrapACL()
	ec := newEtcdCluster(t, etcdBin)
	if ec.leader(60*time.Second) < 0 {
		t.Fatal("etcd: no leader within 60 s")
	}
	return ss, ec
}

// call POSTs a JSON body to member i's gateway and decodes the answer.
func (ec *etcdCluster) call(ctx context.Context, i int, path string, in, out any) error {
	return ec.callWith(ctx, ec.http, i, path, in, out)
}

// callWith is call through hc (a load generator's client of its own).
func (ec *etcdCluster) callWith(ctx context.Context, hc *http.Client, i int, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d%s", ec.client[i], path), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s %s: HTTP %d: %s", ec.names[i], path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// put writes key=val through member i.
func (ec *etcdCluster) put(ctx context.Context, i int, key, val string) error {
	return ec.putWith(ctx, ec.http, i, key, val)
}

// putWith is put through hc.
func (ec *etcdCluster) putWith(ctx context.Context, hc *http.Client, i int, key, val string) error {
	return ec.callWith(ctx, hc, i, "/v3/kv/put", map[string]string{
		"key": base64.StdEncoding.EncodeToString([]byte(key)), "value": base64.StdEncoding.EncodeToString([]byte(val))}, nil)
}

// leader waits until a member reports itself the leader and returns it.
func (ec *etcdCluster) leader(timeout time.Duration) int {
	idx := -1
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for i := range ec.names {
			var st struct {
				Header struct {
					MemberID string `json:"member_id"`
				} `json:"header"`
				Leader string `json:"leader"`
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := ec.call(ctx, i, "/v3/maintenance/status", struct{}{}, &st)
			cancel()
			if err == nil && st.Leader != "" && st.Leader == st.Header.MemberID {
				idx = i
				return idx
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return idx
}

// failover kills etcd's leader, measures, restarts it and waits until the
// three members accept puts again.
func (ec *etcdCluster) failover(t *testing.T, k int) (time.Duration, int) {
	t.Helper()
	l := ec.leader(60 * time.Second)
	if l < 0 {
		t.Fatal("etcd: no leader within 60 s")
	}
	var surv []int
	for i := range ec.names {
		if i != l {
			surv = append(surv, i)
		}
	}
	t0 := time.Now()
	ec.kill(l)
	d := failoverWrite(t, t0, "etcd", func(ctx context.Context, try int) error {
		return ec.put(ctx, surv[try%2], fmt.Sprintf("fo-%d-%d", k, try), "x")
	})
	ec.start(t, l)
	for i := range ec.names {
		n := 0
		wait.For(t, 60*time.Second, "a put through "+ec.names[i], func() (bool, string) {
			n++
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := ec.put(ctx, i, "settle-"+strconv.Itoa(n), "x"); err != nil {
				return false, err.Error()
			}
			return true, ""
		})
	}
	time.Sleep(2 * time.Second)
	return d, l
}
