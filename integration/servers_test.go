package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
)

// serverSet is a three-server cluster of real chime processes.
type serverSet struct {
	t     *testing.T
	ip    string
	names []string
	dirs  []string
	ports [][3]int // api, raft, gossip
	procs []*proc
	logs  string
	extra []string
}

func newServerSet(t *testing.T, ip string, extra ...string) *serverSet {
	t.Helper()
	p := freePorts(t, ip, 9)
	ss := &serverSet{t: t, ip: ip, logs: t.TempDir(), extra: extra}
	base := t.TempDir()
	for i := 0; i < 3; i++ {
		ss.names = append(ss.names, fmt.Sprintf("s%d", i+1))
		ss.dirs = append(ss.dirs, filepath.Join(base, fmt.Sprintf("s%d", i+1)))
		ss.ports = append(ss.ports, [3]int{p[3*i], p[3*i+1], p[3*i+2]})
	}
	ss.procs = make([]*proc, 3)
	for i := range ss.names {
		ss.start(i)
	}
	return ss
}

func (ss *serverSet) start(i int) {
	args := []string{"--log-level", "debug", "server", "--name", ss.names[i], "--data-dir", ss.dirs[i], "--bind", ss.ip,
		"--api-port", strconv.Itoa(ss.ports[i][0]), "--raft-port", strconv.Itoa(ss.ports[i][1]),
		"--gossip-port", strconv.Itoa(ss.ports[i][2]), "--bootstrap-expect", "3", "--gossip-profile", "local"}
	for j := range ss.names {
		if j != i {
			args = append(args, "--join", fmt.Sprintf("%s:%d", ss.ip, ss.ports[j][2]))
		}
	}
	args = append(args, ss.extra...)
	ss.procs[i] = startProc(ss.t, fmt.Sprintf("%s-%d", ss.names[i], time.Now().UnixNano()), ss.logs, nil, args...)
}

func (ss *serverSet) addr(i int) string { return fmt.Sprintf("http://%s:%d", ss.ip, ss.ports[i][0]) }

// addrs are the API addresses (host:port) agents use.
func (ss *serverSet) addrs() []string {
	var out []string
	for i := range ss.names {
		out = append(out, fmt.Sprintf("%s:%d", ss.ip, ss.ports[i][0]))
	}
	return out
}

// leader waits until a running server names a leader and returns its index.
func (ss *serverSet) leader(timeout time.Duration) int {
	ss.t.Helper()
	idx := -1
	waitFor(ss.t, timeout, "a leader", func() string {
		for i, p := range ss.procs {
			if p == nil || !p.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := api.NewClient(ss.addr(i)).Status(ctx)
			cancel()
			if err == nil && st.IsLeader {
				idx = i
				return ""
			}
		}
		return "no server reports itself leader"
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
