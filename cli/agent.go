package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/chime-ha/chime/chime/agent"
	"github.com/chime-ha/chime/chime/agent/local"
)

// agentCommand is `chime agent`: run the agent on a hypervisor, or, with a
// subcommand, talk to the running agent through its local unix socket
// (which works while the management network is down).
func agentCommand() *cli.Command {
	def := agent.DefaultConfig()
	return &cli.Command{
		Name:  "agent",
		Usage: "run the agent on a hypervisor, or talk to the local agent",
		Description: `Without a subcommand, runs the agent: it registers this hypervisor with the servers,
watches the VMs placed here, keeps libvirt in line with them (defining, starting, restarting
crashed VMs, stopping, and removing stale copies) and sends heartbeats.

The agent starts no VM before its first successful sync with the servers, and sends no
heartbeat before it has removed every stale copy of a VM placed elsewhere.

The agent runs on mutual TLS (--tls-ca-file, --tls-cert-file, --tls-key-file with an agent
certificate, see 'chime tls'); without them it refuses to start unless --insecure-no-tls, which
only works against servers that run --dev or --insecure-no-tls.

Example:
  chime agent --name hv1 --data-dir /var/lib/chime/agent --server 10.0.0.1:4650 \
      --server 10.0.0.2:4650 --advertise 10.0.0.11 --business-interface eth1 \
      --tls-ca-file chime-ca.pem --tls-cert-file hv1.pem --tls-key-file hv1-key.pem`,
		Flags: append([]cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "name", Value: def.Name, Usage: "node name", EnvVars: []string{"CHIME_NAME"}},
			&cli.StringFlag{Name: "data-dir", Value: def.DataDir, Usage: "local state directory", EnvVars: []string{"CHIME_DATA_DIR"}},
			&cli.StringSliceFlag{Name: "server", Usage: "server API address HOST:PORT (repeatable)", EnvVars: []string{"CHIME_SERVERS"}},
			&cli.StringFlag{Name: "libvirt-uri", Value: def.LibvirtURI, Usage: "libvirt connection URI", EnvVars: []string{"CHIME_LIBVIRT_URI"}},
			&cli.StringFlag{Name: "domain-type", Usage: "libvirt domain type: kvm, or qemu (TCG emulation); empty: kvm when libvirt offers it", EnvVars: []string{"CHIME_DOMAIN_TYPE"}},
			&cli.StringFlag{Name: "bind", Value: def.Bind, Usage: "address the agent API and gossip listen on", EnvVars: []string{"CHIME_BIND"}},
			&cli.StringFlag{Name: "advertise", Usage: "management address the servers reach this agent at", EnvVars: []string{"CHIME_ADVERTISE"}},
			&cli.IntFlag{Name: "api-port", Value: def.APIPort, Usage: "agent API port (servers' ping-back)"},
			&cli.IntFlag{Name: "gossip-port", Value: def.GossipPort, Usage: "memberlist port"},
			&cli.StringFlag{Name: "business-interface", Usage: "network interface carrying guest traffic", EnvVars: []string{"CHIME_BUSINESS_INTERFACE"}},
			&cli.StringSliceFlag{Name: "business-probe", Usage: "HOST[:PORT] reached by a TCP connect through --business-interface every --business-probe-interval (repeatable; port 22 when omitted; a refused connection counts as an answer)"},
			&cli.DurationFlag{Name: "business-probe-interval", Value: def.BusinessProbeInterval, Usage: "period of the business network probe and of the storage probes"},
			&cli.StringSliceFlag{Name: "storage-path", Usage: "directory given a write+fsync+read-back probe like the data dir (repeatable)"},
			&cli.DurationFlag{Name: "disk-error-hold", Value: def.DiskErrorHold, Usage: "how long a disk I/O error in the kernel log stays a fault"},
			&cli.StringFlag{Name: "migration-addr", Usage: "address for qemu's migration stream (default: --advertise)"},
			&cli.DurationFlag{Name: "shutdown-grace", Value: def.ShutdownGrace, Usage: "how long a guest may take to shut down before it is destroyed"},
			&cli.DurationFlag{Name: "sweep-interval", Value: def.SweepInterval, Usage: "period of the full reconcile pass"},
			&cli.StringFlag{Name: "socket", Usage: "local unix socket (default <data-dir>/agent.sock)", EnvVars: []string{"CHIME_AGENT_SOCKET"}},
			&cli.StringFlag{Name: "gossip-key", Usage: "base64 gossip encryption key (16, 24 or 32 bytes; 'chime operator gossip keygen'); seeds the keyring file in --data-dir, which wins once it exists", EnvVars: []string{"CHIME_GOSSIP_KEY"}},
			&cli.StringSliceFlag{Name: "label", Usage: "node label KEY=VALUE (repeatable)"},
			&cli.StringFlag{Name: "isolation-response", Value: def.IsolationResponse, Usage: "what the agent does when no heartbeat was acknowledged for --isolation-lease: stop (kill every VM, start none; the servers may then restart ha VMs elsewhere) or keep", EnvVars: []string{"CHIME_ISOLATION_RESPONSE"}},
			&cli.DurationFlag{Name: "isolation-lease", Value: def.IsolationLease, Usage: "isolation lease (with --isolation-response stop); the servers treat the node as fenced lease × 1.5 + their --isolation-lease-margin (10s) after its last heartbeat"},
			&cli.DurationFlag{Name: "isolation-stop-bound", Value: def.IsolationStopBound, Usage: "with --isolation-response stop: every VM is stopped within this time once the lease ran out (else an alarm); must be at most the servers' --isolation-lease-margin, or they do not count the lease"},
			&cli.StringFlag{Name: "watchdog", Usage: "watchdog device armed with --isolation-response stop (e.g. /dev/watchdog, softdog): petted while the lease is valid, so a hung agent resets its host"},
			&cli.StringFlag{Name: "join-token", Usage: "ACL token of role agent-join: registering a new node needs it when the servers enforce ACLs (or an agent TLS certificate)", EnvVars: []string{"CHIME_JOIN_TOKEN"}},
			&cli.BoolFlag{Name: "insecure-no-gossip-key", Usage: "gossip in plaintext, knowingly, against servers that do (without it the agent needs --gossip-key or a keyring file in its data dir)"},
			&cli.BoolFlag{Name: "insecure-no-tls", Usage: "run without TLS, knowingly, against servers that run --dev or --insecure-no-tls (logs a warning every minute)"},
		}, tlsFlags()...),
		Action: runAgent,
		Subcommands: []*cli.Command{
			agentStatusCommand(),
			agentDrainCommand(),
			agentMigrateCommand(),
		},
	}
}

func runAgent(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unknown agent subcommand %q (see 'chime agent --help')", c.Args().First())
	}
	if err := applyConfigFile(c); err != nil {
		return err
	}
	cfg, err := agentConfig(c)
	if err != nil {
		return err
	}
	cfg.Logger = newLogger(c, "agent")
	return agent.Run(c.Context, cfg)
}

// agentConfig maps the flags onto agent.Config.
func agentConfig(c *cli.Context) (agent.Config, error) {
	cfg := agent.DefaultConfig()
	cfg.Name = c.String("name")
	cfg.DataDir = c.String("data-dir")
	cfg.Servers = splitList(c.StringSlice("server"))
	cfg.LibvirtURI = c.String("libvirt-uri")
	cfg.DomainType = c.String("domain-type")
	cfg.Bind = c.String("bind")
	cfg.Advertise = c.String("advertise")
	cfg.APIPort = c.Int("api-port")
	cfg.GossipPort = c.Int("gossip-port")
	cfg.BusinessInterface = c.String("business-interface")
	cfg.BusinessProbes = splitList(c.StringSlice("business-probe"))
	cfg.BusinessProbeInterval = c.Duration("business-probe-interval")
	cfg.StoragePaths = splitList(c.StringSlice("storage-path"))
	cfg.DiskErrorHold = c.Duration("disk-error-hold")
	cfg.MigrationAddr = c.String("migration-addr")
	cfg.ShutdownGrace = c.Duration("shutdown-grace")
	cfg.SweepInterval = c.Duration("sweep-interval")
	cfg.Socket = c.String("socket")
	cfg.GossipKey = c.String("gossip-key")
	cfg.IsolationResponse = c.String("isolation-response")
	cfg.IsolationLease = c.Duration("isolation-lease")
	cfg.IsolationStopBound = c.Duration("isolation-stop-bound")
	cfg.WatchdogDevice = c.String("watchdog")
	cfg.JoinToken = c.String("join-token")
	cfg.TLS, cfg.InsecureNoTLS = tlsFiles(c), c.Bool("insecure-no-tls")
	cfg.InsecureNoGossipKey = c.Bool("insecure-no-gossip-key")
	for _, l := range c.StringSlice("label") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return cfg, fmt.Errorf("--label: %q is not KEY=VALUE", l)
		}
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		cfg.Labels[k] = v
	}
	return cfg, cfg.Validate()
}

func splitList(in []string) []string {
	var out []string
	for _, s := range in {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func socketFlag() cli.Flag {
	return &cli.StringFlag{Name: "socket", Value: filepath.Join(agent.DefaultDataDir, "agent.sock"),
		Usage: "the local agent's unix socket", EnvVars: []string{"CHIME_AGENT_SOCKET"}}
}

func agentStatusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the local agent's view: servers, libvirt, drain flag, VMs",
		Flags: []cli.Flag{outputFlag(), socketFlag()},
		Action: func(c *cli.Context) error {
			o, err := output(c)
			if err != nil {
				return err
			}
			st, err := local.NewClient(c.String("socket")).Status(c.Context)
			if err != nil {
				return err
			}
			if o == "json" {
				return printJSON(st)
			}
			return printAgentStatus(st)
		},
	}
}

func printAgentStatus(st *local.Status) error {
	servers := "unreachable"
	if st.Servers.Reachable {
		servers = "reachable"
	}
	if st.Servers.LastError != "" {
		servers += " (" + st.Servers.LastError + ")"
	}
	recon := ago(st.LastReconcile)
	if st.ReconcileError != "" {
		recon += " (" + st.ReconcileError + ")"
	}
	if err := kv([][2]string{
		{"Node ID", st.NodeID},
		{"Name", st.Name},
		{"Servers", strings.Join(st.Servers.Addrs, ", ")},
		{"Servers state", servers},
		{"Last contact", ago(st.Servers.LastContact)},
		{"Registered", strconv.FormatBool(st.Registered)},
		{"Synced", strconv.FormatBool(st.Synced)},
		{"Libvirt connected", strconv.FormatBool(st.LibvirtConnected)},
		{"Locally drained", strconv.FormatBool(st.LocalDrained)},
		{"Local drain", dash(st.LocalDrainState)},
		{"Last reconcile", recon},
	}); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	rows := make([][]string, 0, len(st.VMs))
	for _, vm := range st.VMs {
		state := vm.State
		if vm.Reason != "" {
			state += " (" + vm.Reason + ")"
		}
		desired := vm.DesiredState
		if desired == "" {
			desired = "(not placed here)"
		}
		if vm.StartRefused != nil {
			state += ", start refused: disk locked"
		}
		rows = append(rows, []string{short(vm.ID), dash(vm.Name), desired, state, strconv.FormatUint(vm.Generation, 10)})
	}
	if err := table([]string{"ID", "NAME", "DESIRED", "LIBVIRT", "GENERATION"}, rows); err != nil {
		return err
	}
	for _, vm := range st.VMs {
		if r := vm.StartRefused; r != nil {
			fmt.Fprintf(stdout, "\nStart of %s refused %d times since %s (next try %s): %s\n",
				dash(vm.Name), r.Attempts, ago(r.Since), r.NextTry.Format(time.RFC3339), r.Error)
		}
	}
	return nil
}

func agentDrainCommand() *cli.Command {
	return &cli.Command{
		Name:  "drain",
		Usage: "stop every VM on this node and keep them stopped (local drain flag)",
		Description: `Works while the management network is down: it talks to the local agent's socket.
The flag persists across agent restarts and is reported to the servers when they are reachable;
'chime node enable' on the servers releases it.`,
		Flags: []cli.Flag{socketFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			o, err := output(c)
			if err != nil {
				return err
			}
			res, err := local.NewClient(c.String("socket")).Drain(c.Context)
			if err != nil {
				return err
			}
			if o == "json" {
				return printJSON(res)
			}
			fmt.Fprintf(stdout, "node drained locally (drain id %s): %d VMs stopped\n", res.DrainID, len(res.Stopped))
			if len(res.Running) > 0 {
				return fmt.Errorf("still running after the wait: %v", res.Running)
			}
			return nil
		},
	}
}

func agentMigrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrate",
		Usage: "live-migrate VMs to the agent at --dest over --interface's network, without the servers",
		Flags: []cli.Flag{
			socketFlag(),
			&cli.StringFlag{Name: "interface", Usage: "network interface whose network carries the migration", Required: true},
			&cli.StringFlag{Name: "uuid", Usage: "VM id to migrate"},
			&cli.BoolFlag{Name: "all", Usage: "migrate every VM of this node"},
			&cli.StringFlag{Name: "dest", Usage: "IP address of the destination agent on that network", Required: true},
			outputFlag(),
		},
		Action: func(c *cli.Context) error {
			o, err := output(c)
			if err != nil {
				return err
			}
			req := local.MigrateRequest{Interface: c.String("interface"), UUID: c.String("uuid"), All: c.Bool("all"), Dest: c.String("dest")}
			if (req.UUID == "") == !req.All {
				return errors.New("--uuid: give exactly one of --uuid or --all")
			}
			res, err := local.NewClient(c.String("socket")).Migrate(c.Context, req)
			if err != nil {
				return err
			}
			if o == "json" {
				return printJSON(res)
			}
			failed := 0
			rows := [][]string{}
			for _, r := range res {
				state := "migrated"
				if !r.OK {
					state, failed = "failed", failed+1
				}
				rows = append(rows, []string{short(r.VMID), r.Name, state, dash(r.Took), dash(r.Error)})
			}
			if err := table([]string{"VM", "NAME", "RESULT", "TOOK", "ERROR"}, rows); err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d migrations failed", failed, len(res))
			}
			return nil
		},
	}
}
