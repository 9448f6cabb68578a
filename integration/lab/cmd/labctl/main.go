// Command labctl builds, describes and removes the multi-host KVM lab of
// package lab by hand: `labctl up --hosts 3 --dir .lab`, `labctl status`,
// `labctl down`. It writes DIR/lab.json for scripts. With `--chime BIN`, up
// also starts a chime cluster on the lab (three servers on the management
// bridge, an agent in every host) as background processes with logs and
// pid files in DIR/chime; down stops them. Run it as root.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/chime-ha/chime/integration/lab"
)

const usage = `usage: labctl COMMAND [flags]

commands:
  up      build a lab (removes leftovers of the same prefix first) and write DIR/lab.json;
          with --chime BIN also start 3 chime servers and an agent per host (DIR/chime/)
  down    stop the chime processes, kill the lab's processes, delete its namespaces
          and bridges, remove DIR/lab.json
  status  show the lab's hosts, addresses, whether each libvirtd answers, chime processes
  power-off NODE [ADDR]
          the lab's fence command: kill every process in host NODE's namespace and cut
          its links (chime server --fence-command, through a script that passes --dir)

flags (every command):
  --dir DIR        state directory (default .lab)
  --prefix P       name prefix (default chime; up only, others read lab.json)
  --hosts N        number of hosts (up only, default 3)
  --chime BIN      chime binary: also start servers and agents (up only)
  -o table|json    output format (status only)
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "labctl:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Print(usage)
		if len(args) == 0 {
			return errors.New("missing command")
		}
		return nil
	}
	cmd := args[0]
	fset := flag.NewFlagSet("labctl "+cmd, flag.ContinueOnError)
	fset.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	dir := fset.String("dir", ".lab", "state directory")
	prefix := fset.String("prefix", lab.DefaultPrefix, "name prefix")
	hosts := fset.Int("hosts", 3, "number of hosts")
	format := fset.String("o", "table", "output format: table or json")
	chimeBin := fset.String("chime", "", "chime binary to start servers and agents with (up only)")
	if err := fset.Parse(args[1:]); err != nil {
		return err
	}
	if fset.NArg() > 0 && cmd != "power-off" {
		return fmt.Errorf("unexpected arguments %v", fset.Args())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}

	switch cmd {
	case "up":
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		l, err := lab.Up(ctx, lab.Config{Prefix: *prefix, Hosts: *hosts, Dir: *dir, Log: logf})
		if err != nil {
			return err
		}
		if err := l.WriteState(); err != nil {
			return err
		}
		if *chimeBin != "" {
			if err := startChime(ctx, l, *chimeBin, logf); err != nil {
				return fmt.Errorf("start chime on the lab (lab stays up; labctl down removes it): %w", err)
			}
		}
		return printStatus(ctx, l, *format)
	case "down":
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return err
		}
		if err := stopChime(ctx, filepath.Join(abs, chimeSubdir), logf); err != nil {
			return err
		}
		l, err := lab.Load(*dir, logf)
		if errors.Is(err, fs.ErrNotExist) {
			// No description: remove whatever carries the prefix.
			logf("no %s in %s: cleaning up prefix %q", lab.StateFile, *dir, *prefix)
			return lab.Cleanup(ctx, *prefix)
		}
		if err != nil {
			return err
		}
		if err := l.Down(ctx); err != nil {
			return err
		}
		return os.Remove(filepath.Join(*dir, lab.StateFile))
	case "power-off":
		// A fence command's arguments: the node's name, then its address.
		if fset.NArg() < 1 || fset.NArg() > 2 {
			return errors.New("power-off: want NODE [ADDR]")
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		l, err := lab.Load(*dir, logf)
		if err != nil {
			return err
		}
		h := l.Host(fset.Arg(0))
		if h == nil {
			return fmt.Errorf("power-off: no host %q in the lab", fset.Arg(0))
		}
		if err := h.PowerOff(ctx); err != nil {
			return err
		}
		fmt.Printf("host %s powered off (processes killed, links cut)\n", h.Name)
		return nil
	case "status":
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		l, err := lab.Load(*dir, nil)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no lab in %s (run `labctl up` or `just lab-up`)", *dir)
		}
		if err != nil {
			return err
		}
		return printStatus(ctx, l, *format)
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

type hostStatus struct {
	lab.HostState
	NetnsOK  bool   `json:"netns_exists"`
	Libvirtd string `json:"libvirtd"` // "answers", "not running" or the error
	VMs      int    `json:"qemu_processes"`
}

func printStatus(ctx context.Context, l *lab.Lab, format string) error {
	st := l.State()
	var hosts []hostStatus
	for i, h := range l.Hosts {
		hs := hostStatus{HostState: st.Hosts[i], Libvirtd: "not running"}
		if _, err := os.Stat(h.NetnsPath()); err == nil {
			hs.NetnsOK = true
		}
		if hs.NetnsOK && h.LibvirtdRunning() {
			vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := h.Virsh(vctx, "version"); err != nil {
				hs.Libvirtd = err.Error()
			} else {
				hs.Libvirtd = "answers"
			}
			cancel()
		}
		if hs.NetnsOK {
			if vms, err := h.QemuProcesses(ctx); err == nil {
				hs.VMs = len(vms)
			}
		}
		hosts = append(hosts, hs)
	}
	switch format {
	case "json":
		out := struct {
			lab.State
			Hosts []hostStatus `json:"hosts"`
		}{st, hosts}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	case "table":
		fmt.Printf("lab %q in %s, domain type %s\n", st.Prefix, st.Dir, st.DomainType)
		fmt.Printf("bridges: %s %s (mgmt), %s %s (biz); server addresses %v\n\n",
			st.MgmtBridge, st.MgmtBridgeIP, st.BizBridge, st.BizBridgeIP, st.ServerIPs)
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "HOST\tNETNS\tMGMT\tBIZ\tLIBVIRTD\tVMS\tURI")
		for _, h := range hosts {
			ns := h.Netns
			if !h.NetnsOK {
				ns += " (missing)"
			}
			fmt.Fprintf(w, "%s\t%s\t%s/%s\t%s/%s\t%s\t%d\t%s\n", h.Name, ns, h.MgmtIf, h.MgmtIP, h.BizIf, h.BizIP, h.Libvirtd, h.VMs, h.LibvirtURI)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		procs, err := listChime(chimeDir(l))
		if err != nil || len(procs) == 0 {
			return err
		}
		fmt.Printf("\nchime processes (%s; `source %s` sets CHIME_ADDR, CHIME_TLS_* and CHIME_TOKEN):\n", chimeDir(l), filepath.Join(chimeDir(l), "env"))
		w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tPID\tSTATE\tLOG")
		for _, p := range procs {
			state := "running"
			if !p.alive {
				state = "gone"
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", p.name, p.pid, state, filepath.Join(chimeDir(l), p.name+".log"))
		}
		return w.Flush()
	default:
		return fmt.Errorf("unknown output format %q (want table or json)", format)
	}
}
