package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The per-host directories bind-mounted over the standard libvirt paths
// inside the host's private mount namespace.
var hostMounts = []struct{ sub, target string }{
	{"run/libvirt", "/run/libvirt"},
	{"lib/libvirt", "/var/lib/libvirt"},
	{"etc/libvirt", "/etc/libvirt"},
	{"log/libvirt", "/var/log/libvirt"},
}

// startScript runs inside "ip netns exec NS unshare -m --propagation
// private": the bind mounts live and die with the daemons' private mount
// namespace, so nothing leaks into the root namespace. /var/cache/libvirt
// (qemu capabilities) stays shared: the cache is valid for every host and
// saves each libvirtd seconds of probing. The host's san/ dir goes over
// /dev/chime-lab-san (SANDir), the one directory the lab creates in the
// machine's /dev: its device nodes of the lab's LUNs. $1 is the host dir, $2 is 1 when
// virtlogd must be started too, $3 is 1 when virtlockd must be: libvirtd
// asks virtlockd for the disk leases of every domain it starts
// (lock_manager = "lockd") and refuses the start when it does not answer.
const startScript = `set -e
d=$1
mkdir -p /run/libvirt /var/lib/libvirt /etc/libvirt /var/log/libvirt /var/cache/libvirt
mount --bind "$d/run/libvirt" /run/libvirt
mount --bind "$d/lib/libvirt" /var/lib/libvirt
mount --bind "$d/etc/libvirt" /etc/libvirt
mount --bind "$d/log/libvirt" /var/log/libvirt
mkdir -p /dev/chime-lab-san
mount --bind "$d/san" /dev/chime-lab-san
if [ "$2" = 1 ]; then virtlogd -d -p /run/libvirt/virtlogd.pid; fi
if [ "$3" = 1 ]; then virtlockd -d -p /run/libvirt/virtlockd.pid; fi
exec libvirtd -d -l -p /run/libvirt/libvirtd.pid
`

// LibvirtURI is the host's libvirt URI through its unix socket. It works from
// the root namespace, also while the host's links are cut.
func (h *Host) LibvirtURI() string {
	return "qemu:///system?socket=" + h.LibvirtSocket()
}

// LibvirtSocket is the absolute path of the host's libvirtd unix socket.
func (h *Host) LibvirtSocket() string {
	return filepath.Join(h.Dir, "run/libvirt/libvirt-sock")
}

// TCPURI is the host's libvirt URI over its management address, as another
// host's libvirtd uses it for peer-to-peer migration.
func (h *Host) TCPURI() string {
	return "qemu+tcp://" + h.MgmtIP + "/system"
}

// MgmtAddr returns "MgmtIP:port".
func (h *Host) MgmtAddr(port int) string { return joinHostPort(h.MgmtIP, port) }

// BizAddr returns "BizIP:port".
func (h *Host) BizAddr(port int) string { return joinHostPort(h.BizIP, port) }

// NetnsPath is the bind mount that names the host's network namespace.
func (h *Host) NetnsPath() string { return "/run/netns/" + h.Netns }

// LogDir is where the host's libvirtd, virtlogd and qemu write their logs.
func (h *Host) LogDir() string { return filepath.Join(h.Dir, "log/libvirt") }

// Command returns a command that runs inside the host's network namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Netns, name}, args...)...)
}

// Virsh runs virsh against the host's unix socket and returns its stdout.
func (h *Host) Virsh(ctx context.Context, args ...string) (string, error) {
	out, err := output(ctx, "virsh", append([]string{"-c", h.LibvirtURI()}, args...)...)
	return string(out), err
}

// SetLink cuts (up=false) or restores the host's link to network NetMgmt or
// NetBiz by switching the bridge side of its veth, like pulling a cable: the
// host keeps its address and sees no carrier.
func (h *Host) SetLink(ctx context.Context, network string, up bool) error {
	var veth string
	switch network {
	case NetMgmt:
		veth = h.MgmtVeth
	case NetBiz:
		veth = h.BizVeth
	default:
		return fmt.Errorf("set link of %s: unknown network %q (want %q or %q)", h.Name, network, NetMgmt, NetBiz)
	}
	state := "down"
	if up {
		state = "up"
	}
	if err := run(ctx, "ip", "link", "set", veth, state); err != nil {
		return fmt.Errorf("set %s link of %s %s: %w", network, h.Name, state, err)
	}
	h.log("lab: host %s %s link %s", h.Name, network, state)
	return nil
}

// StopLibvirtd stops the host's libvirtd (SIGTERM, then SIGKILL after 30 s)
// and waits until it is gone. Running VMs keep running. No-op when libvirtd
// is not running.
func (h *Host) StopLibvirtd(ctx context.Context) error {
	pid, ok := h.daemonPID("libvirtd")
	if !ok {
		return nil
	}
	h.log("lab: host %s stop libvirtd pid %d", h.Name, pid)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop libvirtd of %s: %w", h.Name, err)
	}
	if waitGone(ctx, []int{pid}, 30*time.Second) == nil {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if err := waitGone(ctx, []int{pid}, 10*time.Second); err != nil {
		return fmt.Errorf("stop libvirtd of %s: %w", h.Name, err)
	}
	return nil
}

// StartLibvirtd starts the host's libvirtd (and virtlogd and virtlockd if
// they are not running) and waits until it answers. No-op when libvirtd already runs.
func (h *Host) StartLibvirtd(ctx context.Context) error {
	if _, ok := h.daemonPID("libvirtd"); ok {
		return nil
	}
	if err := h.startDaemons(ctx); err != nil {
		return err
	}
	return h.waitLibvirtd(ctx)
}

// LibvirtdRunning reports whether the host's libvirtd process is alive.
func (h *Host) LibvirtdRunning() bool {
	_, ok := h.daemonPID("libvirtd")
	return ok
}

// Pids lists the live processes in the host's network namespace.
func (h *Host) Pids() ([]int, error) {
	return netnsPids(h.NetnsPath())
}

// QemuProcesses maps the uuid of every qemu process running in the host's
// namespace to its pid.
func (h *Host) QemuProcesses(ctx context.Context) (map[string]int, error) {
	pids, err := h.Pids()
	if err != nil {
		return nil, fmt.Errorf("qemu processes of %s: %w", h.Name, err)
	}
	vms := make(map[string]int)
	for _, pid := range pids {
		if uuid, ok := qemuUUID(pid); ok {
			vms[uuid] = pid
		}
	}
	return vms, nil
}

// KillAll sends SIGKILL to every process in the host's namespace (qemu,
// libvirtd, virtlogd, virtlockd, agents) and waits until none is left: the
// host "loses power", and the disk leases its virtlockd held are released
// as a dead host's would be. Its network namespace and links stay.
func (h *Host) KillAll(ctx context.Context) error {
	h.log("lab: host %s kill all", h.Name)
	if err := killNetns(ctx, h.NetnsPath()); err != nil {
		return fmt.Errorf("kill all of %s: %w", h.Name, err)
	}
	return nil
}

// daemonPID reads a daemon's pid file and checks the process is alive and
// still that daemon (pids are reused).
func (h *Host) daemonPID(name string) (int, bool) {
	data, err := os.ReadFile(filepath.Join(h.Dir, "run/libvirt", name+".pid"))
	if err != nil {
		return 0, false
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(data)), &pid); err != nil || pid <= 0 {
		return 0, false
	}
	if !alive(pid) || procComm(pid) != name {
		return 0, false
	}
	return pid, true
}

// VirtlockdRunning reports whether the host's virtlockd process is alive.
func (h *Host) VirtlockdRunning() bool {
	_, ok := h.daemonPID("virtlockd")
	return ok
}

// createDirs lays out the host's libvirt dirs and configuration; lockspace
// is the lab's shared lease directory.
func (h *Host) createDirs(lockspace string) error {
	if err := os.RemoveAll(h.Dir); err != nil {
		return fmt.Errorf("reset dir of %s: %w", h.Name, err)
	}
	for _, m := range hostMounts {
		if err := os.MkdirAll(filepath.Join(h.Dir, m.sub), 0o755); err != nil {
			return fmt.Errorf("dir of %s: %w", h.Name, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(h.Dir, sanSub), 0o755); err != nil {
		return fmt.Errorf("dir of %s: %w", h.Name, err)
	}
	etc := filepath.Join(h.Dir, "etc/libvirt")
	if err := copyConfFiles("/etc/libvirt", etc); err != nil {
		return fmt.Errorf("copy /etc/libvirt for %s: %w", h.Name, err)
	}
	files := map[string]string{
		"libvirtd.conf": fmt.Sprintf(`# chime lab host %s: TCP without auth, never outside a lab.
listen_tls = 0
listen_tcp = 1
auth_tcp = "none"
tcp_port = "%d"
host_uuid = "%s"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`, h.Name, LibvirtPort, h.HostUUID),
		// Disk leases through virtlockd: a second start of a disk image
		// that a qemu on any host holds is refused (uniqueness rule 12).
		"qemu.conf": `user = "root"
group = "root"
security_driver = "none"
lock_manager = "lockd"
`,
		// One lease file per disk (named by the SHA-256 of its path) in
		// the lockspace on the shared storage, which every host sees at
		// the same path: the same scheme works for block devices, whose
		// own fcntl locks would be host-local.
		"qemu-lockd.conf": fmt.Sprintf(`auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = "%s"
`, lockspace),
		"virtlogd.conf": `log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
`,
		"virtlockd.conf": `log_outputs = "3:file:/var/log/libvirt/virtlockd.log"
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s of %s: %w", name, h.Name, err)
		}
	}
	return nil
}

// copyConfFiles copies the regular files at the top of src (client and daemon
// configuration) but none of its sub-directories: those hold the root
// libvirtd's domain and network definitions, which a lab host must not see.
func copyConfFiles(src, dst string) error {
	entries, err := os.ReadDir(src)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (h *Host) createNetns(ctx context.Context, mgmtBridge, bizBridge string) error {
	steps := [][]string{
		{"netns", "add", h.Netns},
		{"-n", h.Netns, "link", "set", "lo", "up"},
	}
	for _, l := range []struct{ veth, bridge, ifname, ip string }{
		{h.MgmtVeth, mgmtBridge, h.MgmtIf, h.MgmtIP},
		{h.BizVeth, bizBridge, h.BizIf, h.BizIP},
	} {
		steps = append(steps,
			[]string{"link", "add", l.veth, "type", "veth", "peer", "name", l.ifname, "netns", h.Netns},
			[]string{"link", "set", l.veth, "master", l.bridge, "up"},
			// No default route: the host reaches only the lab subnets.
			[]string{"-n", h.Netns, "addr", "add", l.ip + "/24", "dev", l.ifname},
			[]string{"-n", h.Netns, "link", "set", l.ifname, "up"},
		)
	}
	for _, args := range steps {
		if err := run(ctx, "ip", args...); err != nil {
			return fmt.Errorf("network of %s: %w", h.Name, err)
		}
	}
	disableIPv6(h.MgmtVeth)
	disableIPv6(h.BizVeth)
	return nil
}

func (h *Host) startDaemons(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(h.Dir, "start.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start daemons of %s: %w", h.Name, err)
	}
	defer logf.Close()
	withLogd, withLockd := "0", "0"
	if _, ok := h.daemonPID("virtlogd"); !ok {
		withLogd = "1"
	}
	if _, ok := h.daemonPID("virtlockd"); !ok {
		withLockd = "1"
	}
	// A stale pid file would make waitLibvirtd report the new daemon dead.
	if err := os.Remove(filepath.Join(h.Dir, "run/libvirt/libvirtd.pid")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("start daemons of %s: %w", h.Name, err)
	}
	h.log("lab: host %s start libvirtd (virtlogd too: %s, virtlockd too: %s)", h.Name, withLogd, withLockd)
	cmd := h.Command(ctx, "unshare", "-m", "--propagation", "private", "sh", "-c", startScript, "sh", h.Dir, withLogd, withLockd)
	// Files, not pipes: the daemons inherit them, and Wait must not wait
	// for daemons to close a pipe.
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Run(); err != nil {
		tail, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("start daemons of %s: %w: %s", h.Name, err, lastLines(string(tail), 5))
	}
	return nil
}

// waitLibvirtd polls until the host's libvirtd answers on its unix socket.
func (h *Host) waitLibvirtd(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		if _, ok := h.daemonPID("libvirtd"); ok {
			_, last = h.Virsh(ctx, "version")
			if last == nil {
				return nil
			}
		} else if _, err := os.Stat(filepath.Join(h.Dir, "run/libvirt/libvirtd.pid")); err == nil {
			// The pid file exists but its process is gone: libvirtd died.
			log, _ := os.ReadFile(filepath.Join(h.LogDir(), "libvirtd.log"))
			return fmt.Errorf("libvirtd of %s exited: %s", h.Name, lastLines(string(log), 5))
		} else {
			last = errors.New("no libvirtd pid file yet")
		}
		select {
		case <-ctx.Done():
			start, _ := os.ReadFile(filepath.Join(h.Dir, "start.log"))
			log, _ := os.ReadFile(filepath.Join(h.LogDir(), "libvirtd.log"))
			return fmt.Errorf("libvirtd of %s does not answer on %s: last: %v; start.log: %s; libvirtd.log: %s",
				h.Name, h.LibvirtURI(), last, lastLines(string(start), 5), lastLines(string(log), 5))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
