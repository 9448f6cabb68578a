package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/tlsconf"
)

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.Name, c.DataDir, c.Servers, c.Advertise = "hv1", "/var/lib/chime", []string{"10.0.0.1:4650"}, "10.0.0.11"
		c.InsecureNoTLS = true
		c.GossipKey = "AAAAAAAAAAAAAAAAAAAAAA=="
		return c
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; "" means valid
	}{
		{name: "defaults plus required fields", mutate: func(*Config) {}},
		{name: "no name", mutate: func(c *Config) { c.Name = "" }, wantErr: "--name"},
		{name: "no data dir", mutate: func(c *Config) { c.DataDir = "" }, wantErr: "--data-dir"},
		{name: "no server", mutate: func(c *Config) { c.Servers = nil }, wantErr: "--server"},
		{name: "empty server", mutate: func(c *Config) { c.Servers = []string{" "} }, wantErr: "--server"},
		{name: "bad libvirt uri", mutate: func(c *Config) { c.LibvirtURI = "qemu" }, wantErr: "--libvirt-uri"},
		{name: "bad bind", mutate: func(c *Config) { c.Bind = "eth0" }, wantErr: "--bind"},
		{name: "no advertise with wildcard bind", mutate: func(c *Config) { c.Advertise = "" }, wantErr: "--advertise"},
		{name: "advertise from specific bind", mutate: func(c *Config) { c.Advertise, c.Bind = "", "10.0.0.11" }},
		{name: "unspecified advertise", mutate: func(c *Config) { c.Advertise = "0.0.0.0" }, wantErr: "--advertise"},
		{name: "bad api port", mutate: func(c *Config) { c.APIPort = 70000 }, wantErr: "--api-port"},
		{name: "zero gossip port", mutate: func(c *Config) { c.GossipPort = 0 }, wantErr: "--gossip-port"},
		{name: "same ports", mutate: func(c *Config) { c.GossipPort = c.APIPort }, wantErr: "--gossip-port"},
		{name: "bad migration addr", mutate: func(c *Config) { c.MigrationAddr = "x" }, wantErr: "--migration-addr"},
		{name: "negative grace", mutate: func(c *Config) { c.ShutdownGrace = -time.Second }, wantErr: "--shutdown-grace"},
		{name: "zero sweep", mutate: func(c *Config) { c.SweepInterval = 0 }, wantErr: "--sweep-interval"},
		{name: "probe without interface", mutate: func(c *Config) { c.BusinessProbes = []string{"10.1.0.1:22"} }, wantErr: "--business-interface"},
		{name: "probe with interface", mutate: func(c *Config) { c.BusinessProbes, c.BusinessInterface = []string{"10.1.0.1:22"}, "eth1" }},
		{name: "bad gossip key", mutate: func(c *Config) { c.GossipKey = "not base64!" }, wantErr: "--gossip-key"},
		{name: "short gossip key", mutate: func(c *Config) { c.GossipKey = "AAAA" }, wantErr: "--gossip-key"},
		{name: "good gossip key", mutate: func(c *Config) { c.GossipKey = "AAAAAAAAAAAAAAAAAAAAAA==" }},
		{name: "no gossip key", mutate: func(c *Config) { c.GossipKey = "" }, wantErr: "--gossip-key"},
		{name: "no gossip key, knowingly", mutate: func(c *Config) { c.GossipKey, c.InsecureNoGossipKey = "", true }},
		{name: "gossip key and --insecure-no-gossip-key", mutate: func(c *Config) { c.InsecureNoGossipKey = true }, wantErr: "--insecure-no-gossip-key"},
		{name: "empty label key", mutate: func(c *Config) { c.Labels = map[string]string{"": "x"} }, wantErr: "--label"},
		{name: "no TLS and not --insecure-no-tls", mutate: func(c *Config) { c.InsecureNoTLS = false }, wantErr: "--tls-cert-file"},
		{name: "TLS material", mutate: func(c *Config) {
			c.InsecureNoTLS, c.TLS = false, tlsconf.Files{CAFile: "a", CertFile: "b", KeyFile: "c"}
		}},
		{name: "--insecure-no-tls and TLS material", mutate: func(c *Config) { c.TLS = tlsconf.Files{CAFile: "a", CertFile: "b", KeyFile: "c"} }, wantErr: "--insecure-no-tls"},
		{name: "--insecure-no-tls and an https server", mutate: func(c *Config) { c.Servers = []string{"https://10.0.0.1:4650"} }, wantErr: "--server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("no error; want one naming %s", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not name %s", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := DefaultConfig()
	if c.APIPort != 4660 || c.GossipPort != 4662 || c.SweepInterval != 10*time.Second || c.LibvirtURI != "qemu:///system" {
		t.Fatalf("defaults = %+v", c)
	}
	c.DataDir = "/d"
	if got := c.SocketPath(); got != "/d/agent.sock" {
		t.Fatalf("socket default = %q", got)
	}
	c.Socket = "/run/x.sock"
	if got := c.SocketPath(); got != "/run/x.sock" {
		t.Fatalf("socket override = %q", got)
	}
}

func TestHealthConfigValidation(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.Name, c.DataDir, c.Servers, c.Advertise = "hv1", "/var/lib/chime", []string{"10.0.0.1:4650"}, "10.0.0.11"
		c.InsecureNoTLS, c.InsecureNoGossipKey = true, true
		return c
	}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"zero probe interval", func(c *Config) { c.BusinessProbeInterval = 0 }, "--business-probe-interval"},
		{"zero hold", func(c *Config) { c.DiskErrorHold = 0 }, "--disk-error-hold"},
		{"bad probe target", func(c *Config) { c.BusinessInterface, c.BusinessProbes = "eth1", []string{"10.1.0.1:ssh"} }, "--business-probe"},
		{"bare host", func(c *Config) { c.BusinessInterface, c.BusinessProbes = "eth1", []string{"10.1.0.1"} }, ""},
		{"relative storage path", func(c *Config) { c.StoragePaths = []string{"srv/images"} }, "--storage-path"},
		{"absolute storage path", func(c *Config) { c.StoragePaths = []string{"/srv/images"} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v; want one naming %s", err, tt.wantErr)
			}
		})
	}
	hc := func() Config {
		c := valid()
		c.DataDir = "/d"
		c.StoragePaths = []string{"/srv/a/", "/d", "/srv/b"}
		return c
	}().healthConfig(nil)
	if want := []string{"/d", "/srv/a", "/srv/b"}; !slices.Equal(hc.StoragePaths, want) {
		t.Fatalf("storage paths = %v, want %v (data dir first, no duplicates)", hc.StoragePaths, want)
	}
}
