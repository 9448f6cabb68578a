package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"
)

// ACLs are on outside --dev (docs/security.md): a harness bootstraps them
// once the servers have a leader and gives the CLI the management token
// (CHIME_TOKEN, inherited by every `chime` the test runs) and the agents a
// join token.

// bootstrapACL runs `chime acl bootstrap` through any server once they
// have a leader, exports the management token as CHIME_TOKEN for the rest
// of the test and returns it. cliArgs are extra CLI flags (TLS material).
func (ss *serverSet) bootstrapACL(cliArgs ...string) string {
	ss.t.Helper()
	var tok api.TokenSecret
	wait.For(ss.t, 60*time.Second, "the ACL bootstrap", func() (bool, string) {
		var last error
		for i, p := range ss.procs {
			if p == nil || !p.running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			last = cliJSON(ctx, &tok, append([]string{"acl", "bootstrap", "--address", ss.addr(i)}, cliArgs...)...)
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
func (ss *serverSet) createToken(role string, cliArgs ...string) string {
	ss.t.Helper()
	var tok api.TokenSecret
	var err error
	for i, p := range ss.procs {
		if p == nil || !p.running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = cliJSON(ctx, &tok, append([]string{"acl", "token", "create", "--role", role, "--description", "test " + role, "--address", ss.addr(i)}, cliArgs...)...)
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
	f.ss.bootstrapACL(f.tls.cliArgs()...)
	f.joinToken = f.ss.createToken("agent-join", f.tls.cliArgs()...)
}

// apiClients is a client of every server, with the fleet's TLS and token.
func (f *fleet) apiClients() *api.Client {
	c := api.NewClient(f.ss.addrs()...)
	c.Token = f.ss.token
	if f.tls != nil {
		c.UseTLS(f.tls.cli.ClientConfig(tlsconf.RoleServer))
	}
	return c
}
