package server

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/gossip"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Config is everything `chime server` is told. Flags, environment and the
// config file all land here; DefaultConfig holds the defaults.
type Config struct {
	Name            string   // server name, also its Raft id and memberlist name
	DataDir         string   // raft log, snapshots, state
	Bind            string   // address all listeners bind to
	Advertise       string   // address others reach us at ("" = Bind)
	APIPort         int      // HTTP API
	RaftPort        int      // Raft TCP transport
	GossipPort      int      // memberlist
	BootstrapExpect int      // form a new cluster once this many servers see each other
	Join            []string // gossip addresses (host:port) of other servers
	Dev             bool     // one server, temporary data dir, bootstraps itself
	GossipKey       string   // base64 key for encrypted gossip (16, 24 or 32 bytes)
	GossipProfile   string   // "lan" or "local" (fast timers for tests)
	Scheduler       string   // scheduler strategy: spread or binpack
	CPUOvercommit   float64  // vCPUs per host vCPU
	// HATolerateFailures is admission control's N: a new ha VM is refused
	// unless every ha VM could be restarted after any N node failures (0: off).
	HATolerateFailures int
	// HABrakeShare: automatic HA pauses when more than this share of the
	// nodes are unreachable at once (the mass-failure brake).
	HABrakeShare float64
	AlarmWebhook []string // Alertmanager-compatible webhook receivers
	// Alertmanagers (--alertmanager, repeatable) are Alertmanagers' base
	// URLs the leader posts alerts to (BASE/api/v2/alerts).
	Alertmanagers []string
	// AlertmanagerCAFile, when set, is the PEM CA bundle https Alertmanagers
	// are verified with (instead of the system's roots).
	AlertmanagerCAFile string
	// AlertmanagerResend is how often every firing alarm is sent again.
	AlertmanagerResend time.Duration
	// ClusterName is the cluster label of alerts sent to Alertmanagers.
	ClusterName       string
	SnapshotThreshold uint64 // take a Raft snapshot after this many log entries
	// SnapshotMaxBytes bounds a snapshot upload (PUT /v1/operator/snapshot):
	// larger is refused with 413 before anything is replaced.
	SnapshotMaxBytes int64
	// StorageRoots (--storage-root, repeatable) are the directories VM
	// disks must lie under; DefaultConfig has structs.DefaultStorageRoot.
	StorageRoots []string
	// BodyReadTimeout bounds reading one request body (0: api.BodyReadTimeout).
	BodyReadTimeout   time.Duration
	HeartbeatInterval time.Duration // agents' heartbeat interval, pushed to them
	MissedHeartbeats  int           // heartbeats missed before a ping-back
	RaftTimeScale     float64       // <1 shortens Raft timers (tests); 1 = raft defaults
	// TLS is the CA, this server's certificate (role server) and its key:
	// set, every listener (API, Raft) is mutual TLS and every dialer
	// (forwarding, Raft, ping-back) verifies its peer's role. Unset, all of
	// it is plaintext, which outside Dev needs InsecureNoTLS (Validate).
	TLS tlsconf.Files
	// InsecureNoTLS is --insecure-no-tls: the operator's explicit choice to
	// run a non-dev server without TLS (warned about every minute).
	InsecureNoTLS bool
	// InsecureNoGossipKey is --insecure-no-gossip-key: the operator's explicit
	// choice to run a non-dev server's gossip unencrypted. Without it, outside
	// Dev, a server needs GossipKey or a keyring file in DataDir.
	InsecureNoGossipKey bool
	// ACL says whether ACL tokens are enforced (docs/security.md):
	// ACLDefault is on outside --dev and off in --dev.
	ACL ACLMode
	// FenceCommand is the executable the leader runs to power off an
	// unreachable node with ha VMs (and `chime node fence`); "" none.
	FenceCommand string
	FenceTimeout time.Duration // one run of the fence command
	FenceRetries int           // attempts per node while it stays unreachable
	// HAMaxRestarts bounds the automatic restart attempts of one VM.
	HAMaxRestarts int
	// IsolationLeaseMargin is the margin over a node's isolation lease:
	// the leader treats a node with isolation response stop as fenced
	// once lease × 1.5 + this margin has passed since its last heartbeat
	// (structs.LeaseDeadline), and only if the node's agent registered a
	// stop bound of at most this margin. Pushed to agents in every answer.
	IsolationLeaseMargin time.Duration
	// IncidentRetention is how many resolved incidents the leader keeps
	// (older ones are pruned through Raft; docs/incidents.md).
	IncidentRetention int
	Logger            hclog.Logger
	// Clock stamps every command this server proposes and is what the
	// leader's duties and the endpoints measure time on; nil is the wall
	// clock. Raft's own timers always run on the wall clock.
	Clock Clock

	// incidentPruneEvery replaces how often the leader checks the
	// incident retention (tests); 0 is incidentPruneEvery.
	incidentPruneEvery time.Duration

	// barrier replaces the new leader's Raft barrier (tests hold it to
	// observe what a leader serves before it passed); nil is raft's.
	barrier func(r *raft.Raft, timeout time.Duration) error
}

// DefaultIncidentRetention is --incident-retention's default.
const DefaultIncidentRetention = 500

// DefaultSnapshotMaxBytes is --snapshot-max-bytes' default: 1 GiB.
const DefaultSnapshotMaxBytes = 1 << 30

// DefaultConfig returns the production defaults.
func DefaultConfig() Config {
	return Config{
		Bind:                 "127.0.0.1",
		APIPort:              4650,
		RaftPort:             4651,
		GossipPort:           4652,
		GossipProfile:        "lan",
		Scheduler:            "spread",
		CPUOvercommit:        1,
		HATolerateFailures:   1,
		HABrakeShare:         0.5,
		SnapshotThreshold:    8192,
		SnapshotMaxBytes:     DefaultSnapshotMaxBytes,
		StorageRoots:         []string{structs.DefaultStorageRoot},
		HeartbeatInterval:    15 * time.Second,
		MissedHeartbeats:     3,
		RaftTimeScale:        1,
		FenceTimeout:         30 * time.Second,
		FenceRetries:         5,
		HAMaxRestarts:        5,
		IsolationLeaseMargin: structs.DefaultLeaseMargin,
		IncidentRetention:    DefaultIncidentRetention,
		AlertmanagerResend:   time.Minute,
		ClusterName:          "chime",
	}
}

// AdvertiseAddr is the address peers and clients use.
func (c Config) AdvertiseAddr() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	return c.Bind
}

// APIURL is this server's API base URL: https when TLS is configured.
func (c Config) APIURL() string {
	scheme := "http://"
	if c.TLS.Enabled() {
		scheme = "https://"
	}
	return scheme + net.JoinHostPort(c.AdvertiseAddr(), fmt.Sprint(c.APIPort))
}

// RaftAddr is this server's Raft address.
func (c Config) RaftAddr() string {
	return net.JoinHostPort(c.AdvertiseAddr(), fmt.Sprint(c.RaftPort))
}

// Validate checks the configuration; errors name the flag.
func (c Config) Validate() error {
	if err := structs.ValidateName("--name", c.Name); err != nil {
		return err
	}
	if c.DataDir == "" {
		return structs.Invalid("--data-dir", "is required")
	}
	for _, r := range c.StorageRoots {
		if err := structs.ValidateStorageRoot("--storage-root", r); err != nil {
			return err
		}
	}
	if c.SnapshotMaxBytes < 1<<20 {
		return structs.Invalid("--snapshot-max-bytes", "must be at least 1 MiB (1048576), got %d", c.SnapshotMaxBytes)
	}
	if net.ParseIP(c.Bind) == nil {
		return structs.Invalid("--bind", "%q is not an IP address", c.Bind)
	}
	if c.Advertise != "" && net.ParseIP(c.Advertise) == nil {
		return structs.Invalid("--advertise", "%q is not an IP address", c.Advertise)
	}
	ports := map[string]int{"--api-port": c.APIPort, "--raft-port": c.RaftPort, "--gossip-port": c.GossipPort}
	seen := map[int]string{}
	for flag, p := range ports {
		if p < 1 || p > 65535 {
			return structs.Invalid(flag, "%d is not a port (1..65535)", p)
		}
		if other, dup := seen[p]; dup {
			return structs.Invalid(flag, "port %d is also used by %s", p, other)
		}
		seen[p] = flag
	}
	if c.BootstrapExpect < 0 || c.BootstrapExpect > 7 {
		return structs.Invalid("--bootstrap-expect", "must be between 0 and 7, got %d", c.BootstrapExpect)
	}
	if c.BootstrapExpect == 0 && len(c.Join) == 0 && !c.Dev {
		return structs.Invalid("--bootstrap-expect", "set --bootstrap-expect (new cluster), --join (existing cluster) or --dev")
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return structs.Invalid("--join", "%q is not HOST:PORT", j)
		}
	}
	switch c.Scheduler {
	case "spread", "binpack":
	default:
		return structs.Invalid("--scheduler", "%q must be spread or binpack", c.Scheduler)
	}
	if c.CPUOvercommit < 1 || c.CPUOvercommit > 16 {
		return structs.Invalid("--cpu-overcommit", "must be between 1 and 16, got %v", c.CPUOvercommit)
	}
	if c.HATolerateFailures < 0 || c.HATolerateFailures > 16 {
		return structs.Invalid("--ha-tolerate-failures", "must be between 0 and 16, got %d", c.HATolerateFailures)
	}
	if c.HABrakeShare <= 0 || c.HABrakeShare > 1 || c.HABrakeShare != c.HABrakeShare {
		return structs.Invalid("--ha-brake-share", "must be a number in (0, 1], got %v", c.HABrakeShare)
	}
	if c.HeartbeatInterval < 100*time.Millisecond || c.HeartbeatInterval > 10*time.Minute {
		return structs.Invalid("--heartbeat-interval", "must be between 100ms and 10m, got %s", c.HeartbeatInterval)
	}
	if c.MissedHeartbeats < 1 || c.MissedHeartbeats > 100 {
		return structs.Invalid("--missed-heartbeats", "must be between 1 and 100, got %d", c.MissedHeartbeats)
	}
	for _, w := range c.AlarmWebhook {
		if !strings.HasPrefix(w, "http://") && !strings.HasPrefix(w, "https://") {
			return structs.Invalid("--alarm-webhook", "%q must be an http(s) URL", w)
		}
	}
	if err := c.validateAlertmanagers(); err != nil {
		return err
	}
	if c.FenceCommand != "" && !strings.HasPrefix(c.FenceCommand, "/") {
		return structs.Invalid("--fence-command", "%q must be an absolute path", c.FenceCommand)
	}
	if c.FenceTimeout < time.Second || c.FenceTimeout > 10*time.Minute {
		return structs.Invalid("--fence-timeout", "must be between 1s and 10m, got %s", c.FenceTimeout)
	}
	if c.FenceRetries < 1 || c.FenceRetries > 100 {
		return structs.Invalid("--fence-retries", "must be between 1 and 100, got %d", c.FenceRetries)
	}
	if c.IsolationLeaseMargin < structs.MinLeaseMargin || c.IsolationLeaseMargin > structs.MaxLeaseMargin {
		return structs.Invalid("--isolation-lease-margin", "must be between %s and %s (and at least every stop agent's --isolation-stop-bound), got %s",
			structs.MinLeaseMargin, structs.MaxLeaseMargin, c.IsolationLeaseMargin)
	}
	if c.IncidentRetention < 1 || c.IncidentRetention > fsm.MaxResolvedIncidents {
		return structs.Invalid("--incident-retention", "must be between 1 and %d, got %d", fsm.MaxResolvedIncidents, c.IncidentRetention)
	}
	if c.HAMaxRestarts < 1 || c.HAMaxRestarts > 100 {
		return structs.Invalid("--ha-max-restarts", "must be between 1 and 100, got %d", c.HAMaxRestarts)
	}
	if err := c.TLS.Validate(); err != nil {
		return &structs.Error{Kind: structs.ErrInvalid, Field: strings.TrimSuffix(strings.Fields(err.Error())[0], ":"), Message: err.Error()}
	}
	if c.InsecureNoTLS && c.TLS.Enabled() {
		return structs.Invalid("--insecure-no-tls", "contradicts --tls-cert-file: pass one or the other")
	}
	// Secure by default: outside --dev, plaintext only when asked for.
	if !c.Dev && !c.TLS.Enabled() && !c.InsecureNoTLS {
		return structs.Invalid("--tls-cert-file", "a server outside --dev needs TLS material (--tls-ca-file, --tls-cert-file, --tls-key-file; see 'chime tls'), or --insecure-no-tls to run in plaintext")
	}
	if _, err := gossip.ParseKey(c.GossipKey); err != nil {
		return structs.Invalid("--gossip-key", "%v", err)
	}
	hasKey := c.GossipKey != "" || gossip.KeyringExists(c.DataDir)
	if c.InsecureNoGossipKey && c.GossipKey != "" {
		return structs.Invalid("--insecure-no-gossip-key", "contradicts --gossip-key: pass one or the other")
	}
	if !c.Dev && !hasKey && !c.InsecureNoGossipKey {
		return structs.Invalid("--gossip-key", "a server outside --dev needs a gossip key (--gossip-key or CHIME_GOSSIP_KEY, base64 of 32 bytes: 'chime operator gossip keygen'), or --insecure-no-gossip-key to gossip in plaintext")
	}
	if c.RaftTimeScale <= 0 || c.RaftTimeScale > 1 {
		return structs.Invalid("raft_time_scale", "must be in (0, 1], got %v", c.RaftTimeScale)
	}
	return nil
}

// validateAlertmanagers checks --alertmanager, --alertmanager-ca-file,
// --alertmanager-resend and --cluster-name.
func (c Config) validateAlertmanagers() error {
	https := false
	for _, a := range c.Alertmanagers {
		u, err := url.Parse(a)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return structs.Invalid("--alertmanager", "%q must be an http(s) URL with a host and no query", a)
		}
		https = https || u.Scheme == "https"
	}
	if c.AlertmanagerCAFile != "" {
		if !https {
			return structs.Invalid("--alertmanager-ca-file", "needs at least one https --alertmanager")
		}
		if _, err := os.Stat(c.AlertmanagerCAFile); err != nil {
			return structs.Invalid("--alertmanager-ca-file", "%v", err)
		}
	}
	if c.AlertmanagerResend < 100*time.Millisecond || c.AlertmanagerResend > time.Hour {
		return structs.Invalid("--alertmanager-resend", "must be between 100ms and 1h, got %s", c.AlertmanagerResend)
	}
	if !clusterName.MatchString(c.ClusterName) {
		return structs.Invalid("--cluster-name", "%q must be 1-63 letters, digits, '.', '_' or '-'", c.ClusterName)
	}
	return nil
}

var clusterName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)
