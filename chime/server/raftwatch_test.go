package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestLeaderWatchWakesFollowersInOrder: at production Raft timing, after
// the leader stops abruptly, each survivor wakes Raft's heartbeat check at
// most once, with its rank by ID (rank 0 first, rank 1 a stagger later),
// and a new leader is elected. The bound is generous (the benchmark has the figures:
// docs/benchmarks.md, about 1.1 s).
func TestLeaderWatchWakesFollowersInOrder(t *testing.T) {
	logs := make([]*syncBuffer, 3)
	i := 0
	tc := newTestCluster(t, 3, func(c *Config) {
		c.RaftTimeScale = 1
		logs[i] = &syncBuffer{}
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: c.Name, Level: hclog.Info, Output: logs[i]})
		i++
	})
	l := tc.leader(30 * time.Second)
	time.Sleep(2 * time.Second) // a few heartbeats: every follower has heard the leader
	t0 := time.Now()
	tc.srv[l].Kill()
	tc.srv[l] = nil
	nl := tc.leader(5 * time.Second)
	took := time.Since(t0)
	t.Logf("leader s%d stopped: s%d leader after %s", l+1, nl+1, took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Errorf("new leader after %s, want within 3 s (HeartbeatTimeout 1 s + stagger 0.1 s + an election)", took)
	}
	var ranks []string
	for j, b := range logs {
		if j == l {
			continue
		}
		out := b.String()
		// Raft's own timer may fire first (then the follower is a
		// candidate already and is not woken): at most once.
		n := strings.Count(out, "leader silent for the heartbeat timeout")
		if n > 1 {
			t.Errorf("s%d woke Raft's check %d times, want at most once:\n%s", j+1, n, out)
		}
		if n != 1 {
			continue
		}
		want := 0
		for k := range 3 {
			if k != l && k < j {
				want++ // ranks by ID among the voters but the leader
			}
		}
		if !strings.Contains(out, fmt.Sprintf("rank=%d", want)) {
			t.Errorf("s%d: want rank=%d in its log:\n%s", j+1, want, out)
		}
		ranks = append(ranks, fmt.Sprintf("s%d rank %d", j+1, want))
	}
	t.Logf("woken: %s", strings.Join(ranks, ", "))
}
