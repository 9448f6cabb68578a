package agent

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/agent/health"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/gossip"
	"github.com/hashicorp/go-hclog"
)

// Config is everything `chime agent` is started with. Flags, CHIME_*
// environment variables and the config file all land here.
type Config struct {
	Name              string        // --name: node name (default: host name)
	DataDir           string        // --data-dir: local state (agent.db) and the default socket
	Servers           []string      // --server (repeatable): HOST:API_PORT of the servers
	LibvirtURI        string        // --libvirt-uri
	DomainType        string        // --domain-type: "kvm", "qemu" (TCG) or "" to detect from libvirt's capabilities
	Bind              string        // --bind: address the agent API and gossip listen on
	Advertise         string        // --advertise: address the servers reach this agent at
	APIPort           int           // --api-port: agent API (ping-back)
	GossipPort        int           // --gossip-port: memberlist
	BusinessInterface string        // --business-interface: NIC carrying guest traffic
	BusinessProbes    []string      // --business-probe (repeatable): HOST[:PORT] probed over the business network
	MigrationAddr     string        // --migration-addr: address for qemu's migration stream (default: advertise)
	ShutdownGrace     time.Duration // --shutdown-grace: how long a guest may take to shut down before it is destroyed
	SweepInterval     time.Duration // --sweep-interval: periodic full reconcile
	Socket            string        // --socket: local unix socket (default <data-dir>/agent.sock)
	GossipKey         string        // --gossip-key: base64 memberlist key (16, 24 or 32 bytes)
	// JoinToken is --join-token: an ACL token of role agent-join, the join
	// credential a new node's registration needs when the servers enforce
	// ACLs (an agent TLS certificate is one too). Sent with every request
	// to the servers as X-Chime-Token.
	JoinToken string
	Labels    map[string]string // --label KEY=VALUE (repeatable)
	// TLS is --tls-ca-file, --tls-cert-file, --tls-key-file: set, the agent
	// API is mutual TLS (servers and agents of the cluster only; adoption
	// announcements from agents only), and the agent dials the servers and
	// other agents over TLS, checking their roles. Its certificate must
	// carry role agent. Required unless InsecureNoTLS.
	TLS tlsconf.Files
	// InsecureNoTLS is --insecure-no-tls: the operator's explicit choice to
	// run the agent in plaintext (its API then takes adoption announcements
	// from anyone who reaches it; warned about every minute). It only makes
	// sense against servers that run --dev or --insecure-no-tls themselves.
	InsecureNoTLS bool
	// InsecureNoGossipKey is --insecure-no-gossip-key: gossip unencrypted,
	// knowingly. Without it the agent needs GossipKey or a keyring file in
	// DataDir.
	InsecureNoGossipKey bool
	Logger              hclog.Logger // nil: a default logger

	// The isolation lease (isolation.go).
	IsolationResponse string        // --isolation-response: stop or keep ("" is keep)
	IsolationLease    time.Duration // --isolation-lease: no acknowledged heartbeat for this long → isolated (with stop)
	WatchdogDevice    string        // --watchdog: watchdog device armed with isolation response stop ("" none)
	// IsolationStopBound is --isolation-stop-bound: the time within which
	// the agent has every VM stopped once its lease ran out (0 is
	// structs.DefaultStopBound). Registered with the servers, which count
	// the lease only if it is at most their --isolation-lease-margin.
	IsolationStopBound time.Duration

	// Health checks (package health).
	BusinessProbeInterval time.Duration // --business-probe-interval: period of the business and storage probes
	StoragePaths          []string      // --storage-path (repeatable): directories given the write+fsync probe besides the data dir
	DiskErrorHold         time.Duration // --disk-error-hold: how long a kernel disk I/O error stays a fault
}

// Defaults.
const (
	DefaultAPIPort       = 4660
	DefaultGossipPort    = 4662
	DefaultLibvirtURI    = "qemu:///system"
	DefaultSweepInterval = reconcile.DefaultSweepInterval
	DefaultShutdownGrace = 60 * time.Second
	DefaultBind          = "0.0.0.0"
	// DefaultIsolationLease is the isolation lease: the servers then treat
	// an isolated node as fenced 55 s after its last heartbeat.
	DefaultIsolationLease = 30 * time.Second
	DefaultDataDir        = "/var/lib/chime/agent"
	socketFile            = "agent.sock"
	stateFile             = "agent.db"
)

// DefaultConfig returns the configuration with every default filled in.
// Name is the host name; Servers and Advertise have no default.
func DefaultConfig() Config {
	name, _ := os.Hostname() // no host name: Validate asks for --name
	return Config{
		Name:          name,
		DataDir:       DefaultDataDir,
		LibvirtURI:    DefaultLibvirtURI,
		Bind:          DefaultBind,
		APIPort:       DefaultAPIPort,
		GossipPort:    DefaultGossipPort,
		ShutdownGrace: DefaultShutdownGrace,
		SweepInterval: DefaultSweepInterval,

		IsolationResponse:  structs.IsolationKeep,
		IsolationLease:     DefaultIsolationLease,
		IsolationStopBound: structs.DefaultStopBound,

		BusinessProbeInterval: health.DefaultBusinessProbeInterval,
		DiskErrorHold:         health.DefaultDiskErrorHold,
	}
}

// SocketPath is the local socket: Socket, or <data-dir>/agent.sock.
func (c Config) SocketPath() string {
	if c.Socket != "" {
		return c.Socket
	}
	if c.DataDir == "" {
		return ""
	}
	return filepath.Join(c.DataDir, socketFile)
}

// AdvertiseAddr is the address the servers reach this agent at: Advertise,
// or Bind when that is a specific address.
func (c Config) AdvertiseAddr() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	if ip := net.ParseIP(c.Bind); ip != nil && !ip.IsUnspecified() {
		return c.Bind
	}
	return ""
}

// Validate checks the configuration; each error names the flag at fault.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if strings.TrimSpace(c.Name) == "" {
		bad("name", "required")
	}
	if c.DataDir == "" {
		bad("data-dir", "required")
	}
	if len(c.Servers) == 0 {
		bad("server", "at least one server address is required")
	}
	for _, s := range c.Servers {
		if strings.TrimSpace(s) == "" {
			bad("server", "empty address")
		}
	}
	if c.LibvirtURI == "" {
		bad("libvirt-uri", "required")
	} else if !strings.Contains(c.LibvirtURI, ":") {
		bad("libvirt-uri", "%q is not a libvirt URI (e.g. qemu:///system)", c.LibvirtURI)
	}
	switch c.DomainType {
	case "", "kvm", "qemu":
	default:
		bad("domain-type", "%q: want kvm, qemu or empty (detect)", c.DomainType)
	}
	if c.Bind != "" && net.ParseIP(c.Bind) == nil {
		bad("bind", "%q is not an IP address", c.Bind)
	}
	if c.Advertise != "" {
		if ip := net.ParseIP(c.Advertise); ip == nil || ip.IsUnspecified() {
			bad("advertise", "%q is not a routable IP address", c.Advertise)
		}
	} else if c.AdvertiseAddr() == "" {
		bad("advertise", "required when --bind is a wildcard address")
	}
	if c.MigrationAddr != "" && net.ParseIP(c.MigrationAddr) == nil {
		bad("migration-addr", "%q is not an IP address", c.MigrationAddr)
	}
	checkPort := func(flag string, p int) {
		if p < 1 || p > 65535 {
			bad(flag, "%d is not a port (1-65535)", p)
		}
	}
	checkPort("api-port", c.APIPort)
	checkPort("gossip-port", c.GossipPort)
	if c.APIPort == c.GossipPort && c.APIPort != 0 {
		bad("gossip-port", "must differ from --api-port")
	}
	if c.ShutdownGrace < 0 {
		bad("shutdown-grace", "must not be negative")
	}
	if c.SweepInterval <= 0 {
		bad("sweep-interval", "must be positive")
	}
	if len(c.BusinessProbes) > 0 && c.BusinessInterface == "" {
		bad("business-interface", "required with --business-probe")
	}
	for _, p := range c.BusinessProbes {
		if strings.TrimSpace(p) == "" {
			bad("business-probe", "empty target")
		}
	}
	c.validateHealth(bad)
	if !structs.ValidIsolationResponse(c.IsolationResponse) {
		bad("isolation-response", "%q: want stop or keep", c.IsolationResponse)
	}
	if c.isolationResponse() == structs.IsolationStop {
		if c.IsolationLease < structs.MinIsolationLease || c.IsolationLease > structs.MaxIsolationLease {
			bad("isolation-lease", "%s: must be between %s and %s", c.IsolationLease, structs.MinIsolationLease, structs.MaxIsolationLease)
		}
		if b := c.IsolationStopBound; b != 0 && (b < structs.MinStopBound || b > structs.MaxLeaseMargin) {
			bad("isolation-stop-bound", "%s: must be between %s and %s", b, structs.MinStopBound, structs.MaxLeaseMargin)
		}
	} else if c.WatchdogDevice != "" {
		bad("watchdog", "needs --isolation-response stop")
	}
	if c.WatchdogDevice != "" && !filepath.IsAbs(c.WatchdogDevice) {
		bad("watchdog", "%q is not an absolute path", c.WatchdogDevice)
	}
	if c.GossipKey != "" {
		if k, err := base64.StdEncoding.DecodeString(c.GossipKey); err != nil {
			bad("gossip-key", "not base64: %v", err)
		} else if n := len(k); n != 16 && n != 24 && n != 32 {
			bad("gossip-key", "decodes to %d bytes; want 16, 24 or 32", n)
		}
	}
	switch {
	case c.InsecureNoGossipKey && c.GossipKey != "":
		bad("insecure-no-gossip-key", "contradicts --gossip-key: pass one or the other")
	case !c.InsecureNoGossipKey && c.GossipKey == "" && !gossip.KeyringExists(c.DataDir):
		bad("gossip-key", "an agent needs the cluster's gossip key (--gossip-key or CHIME_GOSSIP_KEY, as the servers'), or --insecure-no-gossip-key to gossip in plaintext")
	}
	for k := range c.Labels {
		if k == "" {
			bad("label", "empty key")
		}
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	// Secure by default, as the servers: plaintext only when asked for.
	switch {
	case c.InsecureNoTLS && c.TLS.Enabled():
		bad("insecure-no-tls", "contradicts --tls-cert-file: pass one or the other")
	case !c.InsecureNoTLS && !c.TLS.Enabled():
		bad("tls-cert-file", "an agent needs TLS material (--tls-ca-file, --tls-cert-file, --tls-key-file with an agent certificate; see 'chime tls'), or --insecure-no-tls to run in plaintext against servers that run --dev or --insecure-no-tls")
	case c.InsecureNoTLS:
		for _, s := range c.Servers {
			if strings.HasPrefix(strings.TrimSpace(s), "https://") {
				bad("server", "%q is https but the agent has no TLS material (--insecure-no-tls)", s)
			}
		}
	}
	return errors.Join(errs...)
}

// healthConfig derives the health checks' configuration from the agent's.
// The data dir is always probed, before the configured storage paths.
func (c Config) healthConfig(changed func()) health.Config {
	var targets []string
	for _, p := range c.BusinessProbes {
		if t, err := health.NormalizeProbeTarget(p); err == nil {
			targets = append(targets, t)
		}
	}
	paths := []string{c.DataDir}
	for _, p := range c.StoragePaths {
		if p = filepath.Clean(p); !slices.Contains(paths, p) {
			paths = append(paths, p)
		}
	}
	var log hclog.Logger
	if c.Logger != nil {
		log = c.Logger.Named("health")
	}
	return health.Config{
		Interval:          c.BusinessProbeInterval,
		BusinessInterface: c.BusinessInterface,
		BusinessProbes:    targets,
		StoragePaths:      paths,
		DiskErrorHold:     c.DiskErrorHold,
		Logger:            log,
		Changed:           changed,
	}
}

// validateHealth checks the health-check settings of Validate.
func (c Config) validateHealth(bad func(flag, format string, args ...any)) {
	if c.BusinessProbeInterval <= 0 {
		bad("business-probe-interval", "must be positive")
	}
	if c.DiskErrorHold <= 0 {
		bad("disk-error-hold", "must be positive")
	}
	for _, p := range c.BusinessProbes {
		if _, err := health.NormalizeProbeTarget(p); err != nil {
			bad("business-probe", "%v", err)
		}
	}
	if len(c.StoragePaths) > health.MaxStoragePaths {
		bad("storage-path", "at most %d paths", health.MaxStoragePaths)
	}
	for _, p := range c.StoragePaths {
		if !filepath.IsAbs(p) {
			bad("storage-path", "%q is not an absolute path", p)
		}
	}
}

// isolationResponse is the isolation response as registered: keep unless stop.
func (c Config) isolationResponse() string {
	if c.IsolationResponse == structs.IsolationStop {
		return structs.IsolationStop
	}
	return structs.IsolationKeep
}

// stopBound is the agent's bound on the time to stop its VMs once the
// lease ran out.
func (c Config) stopBound() time.Duration {
	if c.IsolationStopBound <= 0 {
		return structs.DefaultStopBound
	}
	return c.IsolationStopBound
}

// isolationStopBound is the stop bound as registered: only with stop.
func (c Config) isolationStopBound() time.Duration {
	if c.isolationResponse() != structs.IsolationStop {
		return 0
	}
	return c.stopBound()
}

// isolationLease is the lease as registered: only with stop.
func (c Config) isolationLease() time.Duration {
	if c.isolationResponse() != structs.IsolationStop {
		return 0
	}
	return c.IsolationLease
}
