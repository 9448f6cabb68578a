package cli

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/server"
)

func serverCommand() *cli.Command {
	d := server.DefaultConfig()
	return &cli.Command{
		Name:  "server",
		Usage: "run a chime server (one of 3 or 5 control nodes)",
		Description: `Runs one member of the Raft group that holds the cluster's desired state.
A new cluster: start three servers with --bootstrap-expect 3 and --join pointing at each other's
gossip ports. A quick test: 'chime server --dev' (one server, temporary data dir).`,
		Flags: append([]cli.Flag{
			configFlag(),
			&cli.BoolFlag{Name: "dev", Usage: "one-server cluster in a temporary data dir"},
			&cli.StringFlag{Name: "name", Usage: "server name (unique, DNS label)", EnvVars: []string{"CHIME_NAME"}},
			&cli.StringFlag{Name: "data-dir", Usage: "directory for the Raft log, snapshots and state", EnvVars: []string{"CHIME_DATA_DIR"}},
			&cli.StringFlag{Name: "bind", Value: d.Bind, Usage: "IP address to listen on", EnvVars: []string{"CHIME_BIND"}},
			&cli.StringFlag{Name: "advertise", Usage: "IP address others reach this server at (default: --bind)", EnvVars: []string{"CHIME_ADVERTISE"}},
			&cli.IntFlag{Name: "api-port", Value: d.APIPort, Usage: "HTTP API port"},
			&cli.IntFlag{Name: "raft-port", Value: d.RaftPort, Usage: "Raft port"},
			&cli.IntFlag{Name: "gossip-port", Value: d.GossipPort, Usage: "memberlist gossip port"},
			&cli.IntFlag{Name: "bootstrap-expect", Usage: "form a new cluster once this many servers see each other"},
			&cli.StringSliceFlag{Name: "join", Usage: "gossip address HOST:PORT of another server (repeatable)"},
			&cli.StringFlag{Name: "gossip-key", Usage: "base64 key (16, 24 or 32 bytes; 'chime operator gossip keygen') to encrypt gossip; seeds the keyring file in --data-dir, which wins once it exists", EnvVars: []string{"CHIME_GOSSIP_KEY"}},
			&cli.StringFlag{Name: "gossip-profile", Value: d.GossipProfile, Usage: "lan, or local for fast failure detection on one machine"},
			&cli.StringFlag{Name: "scheduler", Value: d.Scheduler, Usage: "placement strategy: spread or binpack"},
			&cli.Float64Flag{Name: "cpu-overcommit", Value: d.CPUOvercommit, Usage: "vCPUs placed per host CPU (1 = no overcommit)"},
			&cli.IntFlag{Name: "ha-tolerate-failures", Value: d.HATolerateFailures, Usage: "admission control: refuse a new ha VM unless every ha VM could be restarted after this many node failures (0 = off)"},
			&cli.Float64Flag{Name: "ha-brake-share", Value: d.HABrakeShare, Usage: "pause automatic HA when more than this share of the nodes is unreachable at once (1 = never)"},
			&cli.DurationFlag{Name: "heartbeat-interval", Value: d.HeartbeatInterval, Usage: "agents' heartbeat interval (pushed to agents)"},
			&cli.IntFlag{Name: "missed-heartbeats", Value: d.MissedHeartbeats, Usage: "heartbeats missed before a ping-back decides unreachable"},
			&cli.StringSliceFlag{Name: "alarm-webhook", Usage: "Alertmanager-compatible webhook URL (repeatable)"},
			&cli.StringSliceFlag{Name: "alertmanager", Usage: "Alertmanager base URL the leader posts alerts to (BASE/api/v2/alerts; repeatable)"},
			&cli.StringFlag{Name: "alertmanager-ca-file", Usage: "PEM CA bundle to verify https Alertmanagers with (default: system roots)"},
			&cli.DurationFlag{Name: "alertmanager-resend", Value: d.AlertmanagerResend, Usage: "re-send every firing alarm to the Alertmanagers this often"},
			&cli.StringFlag{Name: "cluster-name", Value: d.ClusterName, Usage: "cluster label of alerts sent to Alertmanagers"},
			&cli.Uint64Flag{Name: "snapshot-threshold", Value: d.SnapshotThreshold, Usage: "take a Raft snapshot after this many log entries"},
			&cli.StringFlag{Name: "fence-command", Usage: "executable the leader runs to power off an unreachable node with ha VMs (args: NODE_NAME MGMT_ADDR; env CHIME_FENCE_*); exit 0 = fenced"},
			&cli.DurationFlag{Name: "fence-timeout", Value: d.FenceTimeout, Usage: "time one run of --fence-command may take"},
			&cli.IntFlag{Name: "fence-retries", Value: d.FenceRetries, Usage: "attempts of --fence-command per node while it stays unreachable (back-off 2s doubling)"},
			&cli.DurationFlag{Name: "isolation-lease-margin", Value: d.IsolationLeaseMargin, Usage: "margin over an isolation lease: a stop node is fenced once lease × 1.5 + this has passed since its last heartbeat; must be at least every stop agent's --isolation-stop-bound (docs/ha.md)"},
			&cli.IntFlag{Name: "ha-max-restarts", Value: d.HAMaxRestarts, Usage: "automatic restart attempts of one ha VM before it is given up (ha.gave_up)"},
			&cli.IntFlag{Name: "incident-retention", Value: d.IncidentRetention, Usage: "resolved incidents kept (the oldest beyond are dropped; docs/incidents.md)"},
			&cli.StringSliceFlag{Name: "storage-root", Value: cli.NewStringSlice(d.StorageRoots...), Usage: "directory VM disks must lie under (repeatable; giving it replaces the default)", EnvVars: []string{"CHIME_STORAGE_ROOT"}},
			&cli.Int64Flag{Name: "snapshot-max-bytes", Value: d.SnapshotMaxBytes, Usage: "largest snapshot 'chime operator snapshot restore' may upload (bytes)"},
			&cli.BoolFlag{Name: "acl", Value: true, Usage: "enforce ACL tokens (docs/security.md); default true, except in --dev where it is false unless given"},
			&cli.BoolFlag{Name: "insecure-no-gossip-key", Usage: "gossip in plaintext outside --dev, knowingly (without it a server needs --gossip-key or a keyring file in its data dir)"},
			&cli.BoolFlag{Name: "insecure-no-tls", Usage: "run without TLS outside --dev, knowingly (logs a warning every minute)"},
			&cli.StringFlag{Name: "memory-limit", Usage: "soft limit of the Go runtime's memory (as GOMEMLIMIT: 768MiB, 2GiB, off); the GC works harder near it (default: GOMEMLIMIT, or none)", EnvVars: []string{"CHIME_MEMORY_LIMIT"}},
			&cli.Float64Flag{Name: "raft-time-scale", Value: 1, Usage: "scale Raft timers (tests only; <1 is faster)", Hidden: true},
			&cli.StringFlag{Name: "cpu-profile", Usage: "write a CPU profile (pprof) of the whole run to this file when the server stops (benchmarks)", Hidden: true},
			&cli.StringFlag{Name: "mem-stats", Usage: "append the process's resident set and Go heap figures to this file every second (benchmarks)", Hidden: true},
			&cli.StringFlag{Name: "mem-profile", Usage: "write a heap profile (pprof) to this file when the server stops (benchmarks)", Hidden: true},
		}, tlsFlags()...),
		Action: func(c *cli.Context) (err error) {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q (flags only)", c.Args().First())
			}
			if err := applyConfigFile(c); err != nil {
				return err
			}
			cfg := server.DefaultConfig()
			cfg.Dev = c.Bool("dev")
			cfg.Name, cfg.DataDir = c.String("name"), c.String("data-dir")
			cfg.Bind, cfg.Advertise = c.String("bind"), c.String("advertise")
			cfg.APIPort, cfg.RaftPort, cfg.GossipPort = c.Int("api-port"), c.Int("raft-port"), c.Int("gossip-port")
			cfg.BootstrapExpect, cfg.Join = c.Int("bootstrap-expect"), c.StringSlice("join")
			cfg.GossipKey, cfg.GossipProfile = c.String("gossip-key"), c.String("gossip-profile")
			cfg.Scheduler, cfg.CPUOvercommit = c.String("scheduler"), c.Float64("cpu-overcommit")
			cfg.HATolerateFailures, cfg.HABrakeShare = c.Int("ha-tolerate-failures"), c.Float64("ha-brake-share")
			cfg.HeartbeatInterval, cfg.MissedHeartbeats = c.Duration("heartbeat-interval"), c.Int("missed-heartbeats")
			cfg.AlarmWebhook, cfg.SnapshotThreshold = c.StringSlice("alarm-webhook"), c.Uint64("snapshot-threshold")
			cfg.RaftTimeScale = c.Float64("raft-time-scale")
			cfg.Alertmanagers, cfg.AlertmanagerCAFile = c.StringSlice("alertmanager"), c.String("alertmanager-ca-file")
			cfg.AlertmanagerResend, cfg.ClusterName = c.Duration("alertmanager-resend"), c.String("cluster-name")
			cfg.FenceCommand, cfg.FenceTimeout = c.String("fence-command"), c.Duration("fence-timeout")
			cfg.FenceRetries, cfg.HAMaxRestarts = c.Int("fence-retries"), c.Int("ha-max-restarts")
			cfg.IsolationLeaseMargin = c.Duration("isolation-lease-margin")
			cfg.SnapshotMaxBytes = c.Int64("snapshot-max-bytes")
			cfg.IncidentRetention = c.Int("incident-retention")
			cfg.StorageRoots = c.StringSlice("storage-root")
			cfg.TLS, cfg.InsecureNoTLS = tlsFiles(c), c.Bool("insecure-no-tls")
			cfg.InsecureNoGossipKey = c.Bool("insecure-no-gossip-key")
			if c.IsSet("acl") {
				cfg.ACL = server.ACLOff
				if c.Bool("acl") {
					cfg.ACL = server.ACLOn
				}
			}
			cfg.Logger = newLogger(c, "chime")
			limit, err := applyMemoryLimit(c.String("memory-limit"), c.IsSet("memory-limit"))
			if err != nil {
				return err
			}
			if limit != math.MaxInt64 {
				cfg.Logger.Info("Go memory limit", "bytes", limit, "MiB", limit>>20)
			}
			if cfg.Dev && cfg.DataDir == "" {
				dir, err := os.MkdirTemp("", "chime-dev-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				cfg.DataDir = dir
			}
			if p := c.String("cpu-profile"); p != "" {
				stop, err := startCPUProfile(p)
				if err != nil {
					return err
				}
				defer stop()
			}
			if p := c.String("mem-stats"); p != "" {
				stopStats, serr := startMemStats(c.Context, p)
				if serr != nil {
					return serr
				}
				defer func() { err = errors.Join(err, stopStats()) }()
			}
			if p := c.String("mem-profile"); p != "" {
				return runWithMemProfile(c.Context, p, func(ctx context.Context) error { return server.Run(ctx, cfg) })
			}
			return server.Run(c.Context, cfg)
		},
	}
}

var _ = time.Second
