package cli

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/agent"
)

func TestAgentFlagsMapOntoConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(agent.Config) bool
		wantErr string
	}{
		{name: "repeatable and comma-separated servers, labels, durations",
			args: []string{"--name", "hv1", "--data-dir", "/d", "--server", "10.0.0.1:4650", "--server", "10.0.0.2:4650,10.0.0.3:4650",
				"--advertise", "10.0.0.11", "--api-port", "5660", "--label", "rack=r1", "--sweep-interval", "2s",
				"--business-interface", "eth1", "--business-probe", "10.1.0.1:22", "--business-probe", "10.1.0.2:22",
				"--tls-ca-file", "ca.pem", "--tls-cert-file", "hv1.pem", "--tls-key-file", "hv1-key.pem", "--gossip-key", "AAAAAAAAAAAAAAAAAAAAAA=="},
			check: func(c agent.Config) bool {
				return c.Name == "hv1" && c.TLS.CertFile == "hv1.pem" && !c.InsecureNoTLS && c.DataDir == "/d" && c.APIPort == 5660 && c.GossipPort == 4662 &&
					reflect.DeepEqual(c.Servers, []string{"10.0.0.1:4650", "10.0.0.2:4650", "10.0.0.3:4650"}) &&
					reflect.DeepEqual(c.Labels, map[string]string{"rack": "r1"}) && c.SweepInterval == 2*time.Second &&
					len(c.BusinessProbes) == 2 && c.SocketPath() == "/d/agent.sock"
			}},
		{name: "--insecure-no-tls", args: []string{"--name", "hv1", "--data-dir", "/d", "--server", "s:1", "--advertise", "10.0.0.11", "--insecure-no-tls", "--insecure-no-gossip-key"},
			check: func(c agent.Config) bool { return c.InsecureNoTLS && c.InsecureNoGossipKey && !c.TLS.Enabled() }},
		{name: "no gossip key is named", args: []string{"--name", "hv1", "--data-dir", "/d", "--server", "s:1", "--advertise", "10.0.0.11", "--insecure-no-tls"}, wantErr: "--gossip-key"},
		{name: "no TLS material is named", args: []string{"--name", "hv1", "--data-dir", "/d", "--server", "s:1", "--advertise", "10.0.0.11"}, wantErr: "--tls-cert-file"},
		{name: "missing server is named", args: []string{"--advertise", "10.0.0.11"}, wantErr: "--server"},
		{name: "bad label is named", args: []string{"--server", "s:1", "--advertise", "10.0.0.11", "--label", "x"}, wantErr: "--label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg agent.Config
			var cfgErr error
			cmd := agentCommand()
			cmd.Action = func(c *cli.Context) error { cfg, cfgErr = agentConfig(c); return nil }
			app := &cli.App{Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
			if err := app.Run(append([]string{"chime", "agent"}, tt.args...)); err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" {
				if cfgErr == nil || !strings.Contains(cfgErr.Error(), tt.wantErr) {
					t.Fatalf("error %v; want one naming %s", cfgErr, tt.wantErr)
				}
				return
			}
			if cfgErr != nil || !tt.check(cfg) {
				t.Fatalf("config %+v, err %v", cfg, cfgErr)
			}
		})
	}
}
