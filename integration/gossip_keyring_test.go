package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/gossip"
	"github.com/chime-ha/chime/integration/ports"
	"github.com/chime-ha/chime/integration/wait"
)

// TestGossipKeyRotation: on three running servers (the built binary),
// `chime operator gossip keyring install NEW`, `use NEW`, `remove OLD`;
// every server keeps seeing the others alive, every keyring lists only NEW,
// a restarted server (still passed the old --gossip-key) keeps NEW from its
// keyring file, and a fourth server with the old key cannot join.
func TestGossipKeyRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ss := newServerSet(t, "127.0.0.1")
	ss.leader(60 * time.Second)
	ss.bootstrapACL()
	oldKey := ss.tls.gossipKey
	newKey, err := gossip.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	aliveEverywhere := func(what string, names ...string) {
		t.Helper()
		for i := range ss.names {
			wait.For(t, 60*time.Second, fmt.Sprintf("%s sees %v alive %s", ss.names[i], names, what), func() (bool, string) {
				ms, err := ss.client(i).Members(ctx)
				if err != nil {
					return false, err.Error()
				}
				alive := map[string]bool{}
				for _, m := range ms {
					alive[m.Name] = m.State == gossip.StateAlive
				}
				for _, n := range names {
					if !alive[n] {
						return false, fmt.Sprintf("%+v", ms)
					}
				}
				return true, ""
			})
		}
	}
	aliveEverywhere("before", ss.names...)

	// Removing the primary key is refused, naming it.
	if out, err := ss.cli(ctx, 0, "operator", "gossip", "keyring", "remove", oldKey); err == nil {
		t.Fatalf("removing the primary key succeeded: %s", out)
	} else {
		t.Logf("remove primary refused: %v", err)
	}
	for i, step := range [][2]string{{"install", newKey}, {"use", newKey}, {"remove", oldKey}} {
		var res api.GossipKeyringChange
		start := time.Now()
		if err := ss.cliJSON(ctx, i%3, &res, "operator", "gossip", "keyring", step[0], step[1]); err != nil {
			t.Fatalf("keyring %s: %v", step[0], err)
		}
		if res.Members != 3 || len(res.Errors) != 0 {
			t.Fatalf("keyring %s: %+v, want 3 members and no errors", step[0], res)
		}
		t.Logf("keyring %s %s via %s: %d members in %s", step[0], gossip.FingerprintOf(step[1]), ss.names[i%3], res.Members, time.Since(start))
		aliveEverywhere("after "+step[0], ss.names...)
	}
	want := gossip.FingerprintOf(newKey)
	checkKeyring := func(i int) {
		t.Helper()
		var kr api.GossipKeyring
		wait.For(t, 30*time.Second, ss.names[i]+" keyring is the new key only", func() (bool, string) {
			if err := ss.cliJSON(ctx, i, &kr, "operator", "gossip", "keyring", "list"); err != nil {
				return false, err.Error()
			}
			return len(kr.Keys) == 1 && kr.Keys[0].Fingerprint == want && kr.Keys[0].Primary, fmt.Sprintf("%+v", kr)
		})
	}
	for i := range ss.names {
		checkKeyring(i)
	}

	// A restart keeps the rotated keyring (its file), though the command
	// line still carries the old --gossip-key.
	ss.procs[2].stop()
	ss.start(2)
	aliveEverywhere("after restarting s3", ss.names...)
	checkKeyring(2)

	// A server with the old key cannot join.
	p := ports.Free(t, "127.0.0.1", 3)
	stale := startProc(t, fmt.Sprintf("stale-%d", time.Now().UnixNano()), ss.logs, nil, "--log-level", "debug", "server",
		"--name", "stale", "--data-dir", filepath.Join(t.TempDir(), "stale"), "--bind", "127.0.0.1",
		"--api-port", strconv.Itoa(p[0]), "--raft-port", strconv.Itoa(p[1]), "--gossip-port", strconv.Itoa(p[2]),
		"--gossip-profile", "local", "--gossip-key", oldKey,
		"--tls-ca-file", ss.tls.server.CAFile, "--tls-cert-file", ss.tls.server.CertFile, "--tls-key-file", ss.tls.server.KeyFile,
		"--join", fmt.Sprintf("127.0.0.1:%d", ss.ports[0][2]), "--join", fmt.Sprintf("127.0.0.1:%d", ss.ports[1][2]))
	defer stale.stop()
	// Generous: the stale server retries its join every half second.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ms, err := ss.client(0).Members(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Name == "stale" {
				t.Fatalf("a server with the removed key joined the pool: %+v", ms)
			}
		}
		time.Sleep(time.Second)
	}
	if !stale.running() {
		t.Log("the stale server exited")
	}
	aliveEverywhere("with the stale server knocking", ss.names...)
}
