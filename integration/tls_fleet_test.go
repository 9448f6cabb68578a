package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/integration/wait"
)

// apiClient is an operator's API client of server i (the fleet's cli
// certificate: every fleet runs mutual TLS).
func (f *fleet) apiClient(i int) *api.Client { return f.ss.client(i) }

// TestTLSFleet runs the whole cluster on mutual TLS on real libvirt (as
// every fleet does; this test checks what TLS refuses as well): agents
// register and heartbeat over TLS (every node normal), a VM is placed and
// started through the desired state, migrated live by a server-ordered
// task (the agent's report over TLS), and each agent's API answers a
// server certificate and refuses plaintext and a CLI certificate.
func TestTLSFleet(t *testing.T) {
	f := newFleet(t)
	vm := f.createVM(t, "tls-web")
	src, _, took := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	t.Logf("VM running on %s after %s", f.lab.Hosts[src].Name, took.Round(time.Millisecond))

	f.mustChime(t, "vm", "migrate", vm.ID)
	var dst int
	tookMig := wait.For(t, 120*time.Second, "VM migrated to another host", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hosts, err := f.where(ctx, vm.ID)
		if err != nil || len(hosts) != 1 {
			return false, fmt.Sprint(hosts, err)
		}
		dst = f.hostIndex(hosts[0])
		var got structs.VM
		if err := f.chimeJSON(&got, "vm", "show", vm.ID); err != nil {
			return false, err.Error()
		}
		return dst != src && got.Migration == nil && f.nodes[got.NodeID] == hosts[0], fmt.Sprintf("on %v, record %s", hosts, got.NodeID)
	})
	t.Logf("migrated %s → %s in %s", f.lab.Hosts[src].Name, f.lab.Hosts[dst].Name, tookMig.Round(time.Millisecond))

	serverM, err := tlsconf.Load(f.tls.server)
	if err != nil {
		t.Fatal(err)
	}
	ping := func(h string, cfg *tls.Config, scheme string) (int, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Get(fmt.Sprintf("%s%s:%d/v1/ping", scheme, h, agent.DefaultAPIPort))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	for _, h := range f.lab.Hosts {
		if code, err := ping(h.MgmtIP, serverM.ClientConfig(tlsconf.RoleAgent), "https://"); err != nil || code != http.StatusOK {
			t.Errorf("ping %s with a server certificate: %d, %v", h.Name, code, err)
		}
		if code, err := ping(h.MgmtIP, nil, "http://"); err == nil && code == http.StatusOK {
			t.Errorf("plaintext ping of %s answered 200", h.Name)
		}
		if _, err := ping(h.MgmtIP, f.tls.cli.ClientConfig(tlsconf.RoleAgent), "https://"); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("ping of %s with a cli certificate: %v, want the handshake refused", h.Name, err)
		}
	}
	// Plaintext CLI refused by the servers.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli(ctx, "node", "list", "--address", f.ss.addr(0)); err == nil {
		t.Error("plaintext CLI answered")
	}
}
