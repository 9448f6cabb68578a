package integration

import (
	"context"
	"testing"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/chime/tlsconf/tlsconftest"
	"github.com/chime-ha/chime/gossip"
)

// clusterTLS is the TLS material of a test cluster: one CA, one
// certificate per role (chime checks roles, not host names, so one per
// role serves every process of that role). Every serverSet, and so every
// fleet, runs on it: the secure default is the path the tests take.
type clusterTLS struct {
	server, agent, cliF tlsconf.Files
	cli, agentM         *tlsconf.Material // loaded, for the test's own API clients
	pki                 *tlsconftest.PKI  // the CA, for more certificates (nil for files made by the binary)
	gossipKey           string            // the cluster's gossip key (base64), as every harness outside --dev passes one
}

// newClusterTLS makes a CA of the test's own and a certificate per role
// (tlsconftest, in a temporary directory).
func newClusterTLS(t *testing.T) *clusterTLS {
	t.Helper()
	p := tlsconftest.New(t)
	ct := loadClusterTLS(t, p.Files(t, "cluster-server", tlsconf.RoleServer, false),
		p.Files(t, "cluster-agent", tlsconf.RoleAgent, false), p.Files(t, "cluster-cli", tlsconf.RoleCLI, false))
	ct.pki = p
	return ct
}

// agentCert issues another agent certificate of the cluster, with common
// name cn (a holder of its own: another host identity).
func (ct *clusterTLS) agentCert(t *testing.T, cn string) tlsconf.Files {
	t.Helper()
	if ct.pki == nil {
		t.Fatal("agentCert: the fleet's certificates were not made by the test")
	}
	return ct.pki.FilesWith(t, "agent-"+cn, tlsconf.CertOptions{Role: tlsconf.RoleAgent, CommonName: cn}, false)
}

// loadClusterTLS is the clusterTLS of existing files (e.g. made by the
// binary's own `chime tls`).
func loadClusterTLS(t *testing.T, server, agent, cli tlsconf.Files) *clusterTLS {
	t.Helper()
	ct := &clusterTLS{server: server, agent: agent, cliF: cli}
	var err error
	if ct.gossipKey, err = gossip.NewKey(); err != nil {
		t.Fatal(err)
	}
	if ct.cli, err = tlsconf.Load(cli); err != nil {
		t.Fatal(err)
	}
	if ct.agentM, err = tlsconf.Load(agent); err != nil {
		t.Fatal(err)
	}
	return ct
}

func tlsArgs(f tlsconf.Files) []string {
	return []string{"--tls-ca-file", f.CAFile, "--tls-cert-file", f.CertFile, "--tls-key-file", f.KeyFile}
}

func (ct *clusterTLS) serverArgs() []string { return append(tlsArgs(ct.server), ct.gossipArgs()...) }
func (ct *clusterTLS) agentArgs() []string  { return append(tlsArgs(ct.agent), ct.gossipArgs()...) }

// gossipArgs is the cluster's --gossip-key.
func (ct *clusterTLS) gossipArgs() []string { return []string{"--gossip-key", ct.gossipKey} }
func (ct *clusterTLS) cliArgs() []string    { return tlsArgs(ct.cliF) }

// client is an operator's API client of urls, with the cli certificate.
func (ct *clusterTLS) client(urls ...string) *api.Client {
	c := api.NewClient(urls...)
	c.UseTLS(ct.cli.ClientConfig(tlsconf.RoleServer))
	return c
}

// agentClient is an API client of urls with the agent certificate, for a
// test that registers a node as an agent would.
func (ct *clusterTLS) agentClient(urls ...string) *api.Client {
	c := api.NewClient(urls...)
	c.UseTLS(ct.agentM.ClientConfig(tlsconf.RoleServer))
	return c
}

// cli runs the CLI with the cli certificate's --tls-* flags appended.
func (ct *clusterTLS) runCLI(ctx context.Context, args ...string) (string, error) {
	return cli(ctx, append(args, ct.cliArgs()...)...)
}
