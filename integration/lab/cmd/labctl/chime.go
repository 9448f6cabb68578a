package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/gossip"
	"github.com/chime-ha/chime/integration/lab"
)

// The cluster `labctl up --chime BIN` starts on the lab: three servers on
// the lab's server addresses (standard ports: each server has its own IP)
// and one agent per host inside the host's network namespace. Every process
// runs detached, in its own session, with its log, pid file and data dir
// under DIR/chime/, so that `labctl down` (another process) can stop it.
// The cluster runs mutual TLS, as production does: labctl makes a CA of
// the lab's own and a certificate per role in DIR/chime/tls/.
const (
	chimeSubdir = "chime"
	apiPort     = 4650
	raftPort    = 4651
	gossipPort  = 4652
	// heartbeatInterval is short so that a human sees a node go
	// unreachable within seconds when they cut its link.
	heartbeatInterval = "2s"
	// shutdownGrace: the lab's diskless guests have no OS that honours an
	// ACPI shutdown, so `vm stop` destroys them after this.
	shutdownGrace = "3s"
)

// chimeDir is DIR/chime: data dirs, logs, pid files and env.
func chimeDir(l *lab.Lab) string { return filepath.Join(l.Cfg.Dir, chimeSubdir) }

// startChime starts the servers, waits for a leader, then starts an agent
// per host, and writes DIR/chime/env for a shell to source.
func startChime(ctx context.Context, l *lab.Lab, bin string, logf func(string, ...any)) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("--chime: %w (run `just build`)", err)
	}
	dir := chimeDir(l)
	// Stop what an earlier lab-up left behind before reusing its dirs.
	if err := stopChime(ctx, dir, logf); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pki, err := makeLabTLS(filepath.Join(dir, "tls"))
	if err != nil {
		return fmt.Errorf("lab TLS material: %w", err)
	}
	logf("lab CA and certificates in %s", filepath.Join(dir, "tls"))
	// One gossip key for the lab: servers and agents need one outside
	// --dev. Each data dir's keyring file keeps it (and any rotation)
	// across a second 'labctl up'.
	gossipKey, err := gossip.NewKey()
	if err != nil {
		return err
	}
	var apiAddrs []string
	for i := range lab.MaxServers {
		apiAddrs = append(apiAddrs, l.ServerAddr(i, apiPort))
	}
	for i := range lab.MaxServers {
		name := fmt.Sprintf("s%d", i+1)
		args := []string{"server", "--name", name, "--data-dir", filepath.Join(dir, name),
			"--bind", l.ServerIPs[i], "--api-port", strconv.Itoa(apiPort), "--raft-port", strconv.Itoa(raftPort),
			"--gossip-port", strconv.Itoa(gossipPort), "--bootstrap-expect", "3", "--gossip-profile", "local",
			"--heartbeat-interval", heartbeatInterval,
			// Every host reports the machine's CPUs: let a few one-vCPU
			// demo VMs share them.
			"--cpu-overcommit", "8",
			// Disks: the default root, the lab's shared images, its LUNs.
			"--storage-root", structs.DefaultStorageRoot, "--storage-root", l.ImagesDir(), "--storage-root", lab.SANDir}
		args = append(args, tlsArgs(pki[tlsconf.RoleServer])...)
		args = append(args, "--gossip-key", gossipKey)
		for j := range lab.MaxServers {
			if j != i {
				args = append(args, "--join", l.ServerAddr(j, gossipPort))
			}
		}
		if err := spawn(dir, name, nil, bin, args...); err != nil {
			return err
		}
		logf("server %s on https://%s (log %s)", name, apiAddrs[i], filepath.Join(dir, name+".log"))
	}
	cliM, err := tlsconf.Load(pki[tlsconf.RoleCLI])
	if err != nil {
		return fmt.Errorf("lab TLS material: %w", err)
	}
	if err := waitLeader(ctx, apiAddrs, cliM); err != nil {
		return err
	}
	mgmt, join, err := bootstrapACL(ctx, apiAddrs, cliM)
	if err != nil {
		return err
	}
	logf("ACLs bootstrapped: the management token is in %s (CHIME_TOKEN)", filepath.Join(dir, "env"))
	for _, h := range l.Hosts {
		args := []string{"agent", "--name", h.Name, "--data-dir", filepath.Join(dir, h.Name),
			"--libvirt-uri", h.LibvirtURI(), "--advertise", h.MgmtIP, "--bind", h.MgmtIP,
			"--business-interface", h.BizIf, "--business-probe", l.BizBridgeIP + ":22",
			"--shutdown-grace", shutdownGrace}
		args = append(args, tlsArgs(pki[tlsconf.RoleAgent])...)
		args = append(args, "--gossip-key", gossipKey)
		if os.Getenv(lab.DomainTypeEnv) != "" {
			args = append(args, "--domain-type", lab.DomainType())
		}
		for _, a := range apiAddrs {
			args = append(args, "--server", a)
		}
		args = append(args, "--join-token", join)
		if err := spawn(dir, "agent-"+h.Name, []string{"ip", "netns", "exec", h.Netns}, bin, args...); err != nil {
			return err
		}
		logf("agent %s in netns %s (socket %s)", h.Name, h.Netns, filepath.Join(dir, h.Name, "agent.sock"))
	}
	c := pki[tlsconf.RoleCLI]
	env := fmt.Sprintf("# source this file: the lab's chime cluster (mutual TLS, the lab's own CA; ACLs)\n"+
		"export CHIME_ADDR=https://%s\nexport CHIME_TLS_CA_FILE=%s\nexport CHIME_TLS_CERT_FILE=%s\nexport CHIME_TLS_KEY_FILE=%s\n"+
		"export CHIME_TOKEN=%s\nexport PATH=%s:$PATH\n",
		apiAddrs[0], c.CAFile, c.CertFile, c.KeyFile, mgmt, filepath.Dir(bin))
	return os.WriteFile(filepath.Join(dir, "env"), []byte(env), 0o600) // it holds the management token
}

// bootstrapACL bootstraps the cluster's ACLs (on outside --dev) over TLS
// (cli certificate m) and makes the agent-join token the agents register
// with; it returns both secrets.
func bootstrapACL(ctx context.Context, addrs []string, m *tlsconf.Material) (mgmt, join string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c := api.NewClient(addrs...)
	c.UseTLS(m.ClientConfig(tlsconf.RoleServer))
	for {
		boot, err := c.ACLBootstrap(ctx)
		if err == nil {
			mgmt = boot.SecretID
			break
		}
		if !errors.Is(err, structs.ErrNoLeader) || ctx.Err() != nil {
			return "", "", fmt.Errorf("acl bootstrap: %w", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	c.Token = mgmt
	tok, err := c.CreateToken(ctx, api.CreateTokenRequest{Role: structs.RoleAgentJoin, Description: "lab agents"})
	if err != nil {
		return "", "", fmt.Errorf("create the agents' join token: %w", err)
	}
	return mgmt, tok.SecretID, nil
}

// spawn starts bin (wrapped by wrap, e.g. ip netns exec) detached in its
// own session, output to dir/name.log, pid in dir/name.pid.
func spawn(dir, name string, wrap []string, bin string, args ...string) error {
	f, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	argv := append(append(append([]string{}, wrap...), bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return os.WriteFile(filepath.Join(dir, name+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// makeLabTLS writes a new CA (ca.pem, ca-key.pem) and one certificate per
// role (server.pem, agent.pem, cli.pem and their keys) into dir, and
// returns the files of each role. chime checks roles, not host names, so
// one certificate per role serves the whole lab.
func makeLabTLS(dir string) (map[tlsconf.Role]tlsconf.Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caFile, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	certPEM, keyPEM, err := tlsconf.CreateCA(tlsconf.CAOptions{})
	if err != nil {
		return nil, err
	}
	if err := tlsconf.WritePair(caFile, caKey, certPEM, keyPEM, true); err != nil {
		return nil, err
	}
	ca, err := tlsconf.LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	out := map[tlsconf.Role]tlsconf.Files{}
	for _, role := range tlsconf.Roles {
		f := tlsconf.Files{CAFile: caFile, CertFile: filepath.Join(dir, string(role)+".pem"), KeyFile: filepath.Join(dir, string(role)+"-key.pem")}
		if err := ca.IssueFiles(tlsconf.CertOptions{Role: role}, f.CertFile, f.KeyFile, true); err != nil {
			return nil, fmt.Errorf("%s certificate: %w", role, err)
		}
		out[role] = f
	}
	return out, nil
}

func tlsArgs(f tlsconf.Files) []string {
	return []string{"--tls-ca-file", f.CAFile, "--tls-cert-file", f.CertFile, "--tls-key-file", f.KeyFile}
}

// waitLeader polls addrs over TLS (cli certificate m) until one leads.
func waitLeader(ctx context.Context, addrs []string, m *tlsconf.Material) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	last := errors.New("no answer yet")
	for {
		for _, a := range addrs {
			c := api.NewClient(a)
			c.UseTLS(m.ClientConfig(tlsconf.RoleServer))
			c.Retries = 0
			sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := c.Status(sctx)
			scancel()
			if err == nil && st.IsLeader {
				return nil
			}
			if err != nil {
				last = err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no chime server became leader: %w", last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// chimeProc is a process labctl started, found through its pid file.
type chimeProc struct {
	name  string
	pid   int
	alive bool
}

// listChime reads dir's pid files. A pid counts as alive only when the
// process's command line still names a path under dir, so a reused pid is
// never signalled.
func listChime(dir string) ([]chimeProc, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.pid"))
	if err != nil {
		return nil, err
	}
	var out []chimeProc
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || pid <= 0 {
			continue
		}
		p := chimeProc{name: strings.TrimSuffix(filepath.Base(f), ".pid"), pid: pid}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		p.alive = err == nil && strings.Contains(string(cmdline), dir+"/")
		out = append(out, p)
	}
	return out, nil
}

// stopChime stops the agents, then the servers (SIGTERM, SIGKILL after
// 10 s), and removes their pid files. Stopping the agents leaves the VMs
// running; lab down kills them with the hosts.
func stopChime(ctx context.Context, dir string, logf func(string, ...any)) error {
	procs, err := listChime(dir)
	if err != nil {
		return err
	}
	for _, agents := range []bool{true, false} {
		var pids []int
		for _, p := range procs {
			if strings.HasPrefix(p.name, "agent-") != agents {
				continue
			}
			_ = os.Remove(filepath.Join(dir, p.name+".pid"))
			if !p.alive {
				continue
			}
			logf("stop %s (pid %d)", p.name, p.pid)
			_ = syscall.Kill(p.pid, syscall.SIGTERM)
			pids = append(pids, p.pid)
		}
		if err := waitExit(ctx, pids, 10*time.Second); err != nil {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			if err := waitExit(ctx, pids, 5*time.Second); err != nil {
				return err
			}
		}
	}
	return nil
}

func waitExit(ctx context.Context, pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				// A zombie of ours would linger; these are not our children.
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("processes %v still running after %s", left, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
