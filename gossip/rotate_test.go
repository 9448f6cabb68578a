package gossip

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/integration/wait"
)

// TestRotateKeyring: install, use, remove the old key on one member of a
// three-member pool; every member follows (and saves its keyring file), all
// stay alive, and afterwards a joiner with the old key is refused while one
// with the new key joins.
func TestRotateKeyring(t *testing.T) {
	oldKey, newKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	dirs := map[string]string{}
	var pools []*Pool
	for _, name := range []string{"a", "b", "c"} {
		dirs[name] = t.TempDir()
		pools = append(pools, startPool(t, name, map[string]string{MetaRole: RoleServer}, func(c *Config) {
			c.Key, c.KeyringDir = oldKey, dirs[name]
		}))
	}
	joinTo(t, pools[1], pools[0])
	joinTo(t, pools[2], pools[0])
	allAlive := func(what string) {
		for _, p := range pools {
			wait.For(t, converge, p.Name()+" sees 3 alive "+what, func() (bool, string) {
				alive := 0
				for _, m := range p.Members() {
					if m.State == StateAlive {
						alive++
					}
				}
				return alive == 3, describe(p.Members())
			})
		}
	}
	allAlive("before")
	ctx := context.Background()

	if _, err := pools[0].RotateKeyring(ctx, KeyRemove, oldKey); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Fatalf("removing the primary key: %v, want a refusal naming the primary key", err)
	}
	if _, err := pools[0].RotateKeyring(ctx, KeyUse, newKey); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("using a key not installed: %v, want a refusal", err)
	}
	steps := []struct {
		op       string
		key      []byte
		wantKeys [][]byte
	}{
		{KeyInstall, newKey, [][]byte{oldKey, newKey}},
		{KeyUse, newKey, [][]byte{newKey, oldKey}},
		{KeyRemove, oldKey, [][]byte{newKey}},
	}
	for _, st := range steps {
		res, err := pools[0].RotateKeyring(ctx, st.op, st.key)
		if err != nil || res.Members != 3 || len(res.Errors) != 0 {
			t.Fatalf("%s: %+v, %v", st.op, res, err)
		}
		for _, p := range pools {
			wait.For(t, converge, fmt.Sprintf("%s keyring after %s", p.Name(), st.op), func() (bool, string) {
				got := p.Keys()
				file, err := LoadKeyring(dirs[p.Name()])
				return sameKeys(got, st.wantKeys) && err == nil && sameKeys(file, st.wantKeys),
					fmt.Sprintf("memory %d keys, file %d keys (%v)", len(got), len(file), err)
			})
		}
		allAlive("after " + st.op)
		t.Logf("%s %s: %d members told", st.op, Fingerprint(st.key), res.Members)
	}

	jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stale := startPool(t, "stale", nil, func(c *Config) { c.Key = oldKey })
	if n, err := stale.Join(jctx, []string{pools[0].LocalAddr()}); err == nil {
		t.Fatalf("a member with the removed key joined (n=%d)", n)
	}
	fresh := startPool(t, "fresh", nil, func(c *Config) { c.Key = newKey })
	if _, err := fresh.Join(jctx, []string{pools[1].LocalAddr()}); err != nil {
		t.Fatalf("a member with the new key cannot join: %v", err)
	}
}

func sameKeys(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
