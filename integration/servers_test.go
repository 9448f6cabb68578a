package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// serverSet is a three-server cluster of real chime processes on mutual
// TLS (tls: a CA of the test's own unless the test brings one).
type serverSet struct {
	t     *testing.T
	ips   []string // bind address of each server
	names []string
	dirs  []string
	ports [][3]int // api, raft, gossip
	procs []*proc
	logs  string
	extra []string
	tls   *clusterTLS
	token string // the management token, once bootstrapACL ran
}

// newServerSet starts three servers bound to one IP (distinct ports), with
// data and logs in temporary directories.
func newServerSet(t *testing.T, ip string, extra ...string) *serverSet {
	t.Helper()
	return newServerSetOn(t, []string{ip, ip, ip}, t.TempDir(), t.TempDir(), extra...)
}

// newServerSetOn starts three servers, server i bound to ips[i], with data
// directories under base and logs in logs, on TLS with a new CA; extra is
// appended to every server's command line.
func newServerSetOn(t *testing.T, ips []string, base, logs string, extra ...string) *serverSet {
	t.Helper()
	return newServerSetTLS(t, ips, base, logs, newClusterTLS(t), extra...)
}

// newServerSetTLS is newServerSetOn with the given TLS material.
func newServerSetTLS(t *testing.T, ips []string, base, logs string, tls *clusterTLS, extra ...string) *serverSet {
	t.Helper()
	if len(ips) != 3 {
		t.Fatalf("newServerSetOn: want 3 addresses, got %v", ips)
	}
	ss := &serverSet{t: t, ips: ips, logs: logs, extra: extra, tls: tls}
	// One ports.Free per address: ports freed by one call may come back
	// from the next (a server once failed to bind its API port, another's
	// gossip port).
	free := map[string][]int{}
	for _, ip := range ips {
		if free[ip] == nil {
			free[ip] = ports.Free(t, ip, 9) // enough for the three servers on one address
		}
	}
	for i := 0; i < 3; i++ {
		p := free[ips[i]][:3]
		free[ips[i]] = free[ips[i]][3:]
		ss.names = append(ss.names, fmt.Sprintf("s%d", i+1))
		ss.dirs = append(ss.dirs, filepath.Join(base, fmt.Sprintf("s%d", i+1)))
		ss.ports = append(ss.ports, [3]int{p[0], p[1], p[2]})
	}
	ss.procs = make([]*proc, 3)
	for i := range ss.names {
		ss.start(i)
	}
	return ss
}

func (ss *serverSet) start(i int) {
	args := []string{"--log-level", "debug", "server", "--name", ss.names[i], "--data-dir", ss.dirs[i], "--bind", ss.ips[i],
		"--api-port", strconv.Itoa(ss.ports[i][0]), "--raft-port", strconv.Itoa(ss.ports[i][1]),
		"--gossip-port", strconv.Itoa(ss.ports[i][2]), "--bootstrap-expect", "3", "--gossip-profile", "local"}
	for j := range ss.names {
		if j != i {
			args = append(args, "--join", fmt.Sprintf("%s:%d", ss.ips[j], ss.ports[j][2]))
		}
	}
	args = append(append(args, ss.tls.serverArgs()...), ss.extra...)
	ss.procs[i] = startProc(ss.t, fmt.Sprintf("%s-%d", ss.names[i], time.Now().UnixNano()), ss.logs, nil, args...)
}

// addr is server i's API URL.
func (ss *serverSet) addr(i int) string {
	return fmt.Sprintf("https://%s:%d", ss.ips[i], ss.ports[i][0])
}

// client is an operator's API client of server i (cli certificate, and
// the management token once bootstrapACL ran).
func (ss *serverSet) client(i int) *api.Client { return ss.withToken(ss.tls.client(ss.addr(i))) }

// clientAll is an operator's API client of every server.
func (ss *serverSet) clientAll() *api.Client { return ss.withToken(ss.tls.client(ss.addrs()...)) }

func (ss *serverSet) withToken(c *api.Client) *api.Client {
	c.Token = ss.token
	return c
}

// cli runs the CLI (with the cli certificate) against server i.
func (ss *serverSet) cli(ctx context.Context, i int, args ...string) (string, error) {
	return ss.tls.runCLI(ctx, append(args, "--address", ss.addr(i))...)
}

// cliJSON is cli with -o json, decoded into v.
func (ss *serverSet) cliJSON(ctx context.Context, i int, v any, args ...string) error {
	out, err := ss.cli(ctx, i, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("decode %q: %w", out, err)
	}
	return nil
}

// addrs are the API addresses (host:port) agents use (https with their
// --tls-* flags).
func (ss *serverSet) addrs() []string {
	var out []string
	for i := range ss.names {
		out = append(out, fmt.Sprintf("%s:%d", ss.ips[i], ss.ports[i][0]))
	}
	return out
}

// leader waits until a running server names a leader and returns its index.
func (ss *serverSet) leader(timeout time.Duration) int {
	ss.t.Helper()
	idx := -1
	wait.For(ss.t, timeout, "a leader", func() (bool, string) {
		for i, p := range ss.procs {
			if p == nil || !p.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := ss.client(i).Status(ctx)
			cancel()
			if err == nil && st.IsLeader {
				idx = i
				return true, ""
			}
		}
		return false, "no server reports itself leader"
	})
	return idx
}

func (ss *serverSet) stopAll() {
	for _, p := range ss.procs {
		if p != nil {
			p.stop()
		}
	}
}
