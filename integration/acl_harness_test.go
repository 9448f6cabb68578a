package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/integration/wait"
)

// ACLs are on outside --dev (docs/security.md): a harness bootstraps them
// once the servers have a leader and gives the CLI the management token
// (CHIME_TOKEN, inherited by every `chime` the test runs) and the agents a
// join token.

// bootstrapACL runs `chime acl bootstrap` (with the set's cli
// certificate) through any server once they have a leader, exports the
// management token as CHIME_TOKEN for the rest of the test, keeps it for
// the set's API clients and returns it.
func (ss *serverSet) bootstrapACL() string {
	ss.t.Helper()
	var tok api.TokenSecret
	wait.For(ss.t, 60*time.Second, "the ACL bootstrap", func() (bool, string) {
		var last error
		for i, p := range ss.procs {
			if p == nil || !p.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			last = ss.cliJSON(ctx, i, &tok, "acl", "bootstrap")
			cancel()
			if last == nil {
				return true, ""
			}
		}
		return false, fmt.Sprint(last)
	})
	ss.token = tok.SecretID
	ss.t.Setenv("CHIME_TOKEN", tok.SecretID)
	return tok.SecretID
}

// createToken creates a token of role through any server with the
// management token (CHIME_TOKEN) and returns its secret.
func (ss *serverSet) createToken(role string) string {
	ss.t.Helper()
	var tok api.TokenSecret
	var err error
	for i, p := range ss.procs {
		if p == nil || !p.running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = ss.cliJSON(ctx, i, &tok, "acl", "token", "create", "--role", role, "--description", "test "+role)
		cancel()
		if err == nil {
			return tok.SecretID
		}
	}
	ss.t.Fatalf("create a %s token: %v", role, err)
	return ""
}

// bootstrapACL bootstraps the fleet's ACLs and makes the join token its
// agents register with (--join-token).
func (f *fleet) bootstrapACL(t *testing.T) {
	t.Helper()
	f.ss.bootstrapACL()
	f.joinToken = f.ss.createToken("agent-join")
}
