package lab

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A lab's subnets are 10.231.X.0/24 (management: agents, servers,
// migration) and 10.232.X.0/24 (business: guest traffic probes), with the
// lowest X that no route of the machine covers yet: the first lab gets
// X = 0, a second lab running at the same time (another test package) the
// next. The root namespace owns both subnets through its bridges, so traffic
// to these addresses stays on the machine.
const (
	mgmtOctet  = 231
	bizOctet   = 232
	maxSubnets = 64

	// subnetLock serialises subnet choice and bridge creation between
	// processes building labs at the same time.
	subnetLock = "/run/chime-lab.lock"

	// LibvirtPort is the TCP port every host's libvirtd listens on
	// (qemu+tcp, no auth: lab only).
	LibvirtPort = 16509

	// MaxHosts bounds Config.Hosts: host N gets .10+N in both subnets.
	MaxHosts = 50
	// MaxServers is how many extra root-namespace addresses the management
	// bridge carries for chime servers (.2, .3, .4).
	MaxServers = 3

	// DefaultPrefix names everything a lab creates unless Config.Prefix says
	// otherwise.
	DefaultPrefix = "chime"

	// In-namespace interface names of every host.
	mgmtIf = "mgmt0"
	bizIf  = "biz0"
)

// The lab's networks, as SetLink names them.
const (
	NetMgmt = "mgmt"
	NetBiz  = "biz"
)

// readyTimeout bounds the wait for a freshly started libvirtd to answer; the
// first start of a libvirtd probes qemu's capabilities, which takes seconds.
const readyTimeout = 90 * time.Second

// prefixRE keeps interface names within the kernel's 15 characters:
// "<prefix>h50m" is at most 13.
var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,8}$`)

// Config describes the lab to build.
type Config struct {
	// Prefix names everything created: netns "<prefix>-hvN", bridges
	// "<prefix>m0" and "<prefix>b0", root-side veths "<prefix>hNm"/"<prefix>hNb".
	// Default "chime"; tests use another prefix so they never touch a
	// person's lab.
	Prefix string
	// Hosts is the number of hypervisor hosts (1..MaxHosts).
	Hosts int
	// Dir is the state directory: one sub-directory per host holding its
	// libvirt run/, lib/, etc/ and log/ directories.
	Dir string
	// Log receives progress lines; nil discards them.
	Log func(format string, args ...any) `json:"-"`
}

// Lab is a running lab.
type Lab struct {
	Cfg   Config
	Hosts []*Host
	// MgmtSubnet and BizSubnet are the lab's networks ("10.231.0.0/24").
	MgmtSubnet, BizSubnet string
	// MgmtBridge and BizBridge are the bridge names in the root namespace.
	MgmtBridge, BizBridge string
	// MgmtBridgeIP and BizBridgeIP are the root namespace's addresses on
	// the bridges (10.231.X.1, 10.232.X.1).
	MgmtBridgeIP, BizBridgeIP string
	// ServerIPs are extra root-namespace addresses on the management bridge
	// for up to three chime servers (10.231.X.2-4).
	ServerIPs []string
	// SharedDir is the lab's shared storage, Dir/shared: every host sees it
	// at the same path, as hypervisors see an NFS export. Disk images go in
	// ImagesDir, the virtlockd lease files in LockspaceDir.
	SharedDir string
}

// The sub-directories of the shared storage.
const (
	imagesSub    = "images"
	lockspaceSub = "lockd"
	// lunInfix sits between prefix and name in a LUN's backing file, by
	// which Cleanup finds the loop devices of a prefix.
	lunInfix = "-lun-"
)

// ImagesDir is where CreateDisk puts disk images (SharedDir/images).
func (l *Lab) ImagesDir() string { return filepath.Join(l.SharedDir, imagesSub) }

// LockspaceDir is the lease directory every host's virtlockd locks in
// (SharedDir/lockd; qemu-lockd.conf file_lockspace_dir).
func (l *Lab) LockspaceDir() string { return filepath.Join(l.SharedDir, lockspaceSub) }

// Host is one hypervisor host: a network namespace with its own libvirtd.
type Host struct {
	Name   string // "hv1"
	Netns  string // "<prefix>-hv1"
	MgmtIP string // management address inside the netns
	BizIP  string // business address inside the netns
	MgmtIf string // management interface inside the netns
	BizIf  string // business interface inside the netns
	// MgmtVeth and BizVeth are the root-namespace ends of the host's links,
	// enslaved to the bridges; SetLink switches them.
	MgmtVeth, BizVeth string
	// Dir holds run/libvirt, lib/libvirt, etc/libvirt and log/libvirt,
	// bind-mounted over the standard paths for this host's daemons.
	Dir string
	// HostUUID is the libvirtd host_uuid; it must differ between hosts or
	// libvirt refuses to migrate ("migrate to the same host").
	HostUUID string

	log func(format string, args ...any)
}

func (c *Config) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("lab prefix %q: want 1-9 lower-case letters or digits, starting with a letter", c.Prefix)
	}
	if c.Hosts < 1 || c.Hosts > MaxHosts {
		return fmt.Errorf("lab hosts %d: want 1..%d", c.Hosts, MaxHosts)
	}
	if c.Dir == "" {
		return errors.New("lab dir is empty")
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return fmt.Errorf("lab dir: %w", err)
	}
	c.Dir = abs
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	return nil
}

// Requirements reports why a lab cannot run here (not root, a missing
// binary), or nil. Tests skip on it outside CI.
func Requirements() error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("not running as root"))
	}
	for _, bin := range []string{"ip", "unshare", "mount", "sh", "libvirtd", "virtlogd", "virtlockd", "virsh", "qemu-img", "losetup"} {
		if _, err := exec.LookPath(bin); err != nil {
			errs = append(errs, fmt.Errorf("%s not found in PATH (scripts/install-deps.sh installs it)", bin))
		}
	}
	if _, err := qemuBinary(); err != nil {
		errs = append(errs, err)
	}
	// libvirtd's qemu driver exits at start without them, even when
	// qemu.conf runs qemu as root.
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		errs = append(errs, errors.New("user libvirt-qemu missing (scripts/libvirt-up.sh creates it)"))
	}
	if _, err := user.LookupGroup("libvirt-qemu"); err != nil {
		errs = append(errs, errors.New("group libvirt-qemu missing (scripts/libvirt-up.sh creates it)"))
	}
	return errors.Join(errs...)
}

func qemuBinary() (string, error) {
	for _, p := range []string{"qemu-system-x86_64", "/usr/libexec/qemu-kvm"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", errors.New("qemu-system-x86_64 not found")
}

// DomainTypeEnv forces DomainType to "qemu" (TCG) on a machine with KVM, so
// the TCG path can be tested anywhere: CHIME_LAB_DOMAIN_TYPE=qemu.
const DomainTypeEnv = "CHIME_LAB_DOMAIN_TYPE"

// DomainType is the libvirt domain type to use here: "kvm" when /dev/kvm
// exists, else "qemu" (TCG); DomainTypeEnv overrides it.
func DomainType() string {
	if t := os.Getenv(DomainTypeEnv); t == "kvm" || t == "qemu" {
		return t
	}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		return "kvm"
	}
	return "qemu"
}

// Up builds a lab: it first removes leftovers of a crashed lab with the same
// prefix, then creates the bridges, the hosts' namespaces and links, and
// starts every host's virtlogd and libvirtd, returning once each libvirtd
// answers. On error it tears down what it built.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := Requirements(); err != nil {
		return nil, fmt.Errorf("lab requirements: %w", err)
	}
	if err := Cleanup(ctx, cfg.Prefix); err != nil {
		return nil, fmt.Errorf("clean leftovers of lab %q: %w", cfg.Prefix, err)
	}
	l, err := createBridges(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := l.build(ctx); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := l.Down(cctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("tear down after failed up: %w", derr))
		}
		return nil, err
	}
	return l, nil
}

// newLab lays out names and addresses in the subnets of index x; it creates
// nothing.
func newLab(cfg Config, x int) *Lab {
	mgmt, biz := labSubnet(mgmtOctet, x), labSubnet(bizOctet, x)
	l := &Lab{
		Cfg:          cfg,
		MgmtSubnet:   mgmt.String(),
		BizSubnet:    biz.String(),
		MgmtBridge:   cfg.Prefix + "m0",
		BizBridge:    cfg.Prefix + "b0",
		MgmtBridgeIP: subnetAddr(mgmt, 1),
		BizBridgeIP:  subnetAddr(biz, 1),
		SharedDir:    filepath.Join(cfg.Dir, "shared"),
	}
	for i := 0; i < MaxServers; i++ {
		l.ServerIPs = append(l.ServerIPs, subnetAddr(mgmt, 2+i))
	}
	for n := 1; n <= cfg.Hosts; n++ {
		name := "hv" + strconv.Itoa(n)
		netns := cfg.Prefix + "-" + name
		l.Hosts = append(l.Hosts, &Host{
			Name:     name,
			Netns:    netns,
			MgmtIP:   subnetAddr(mgmt, 10+n),
			BizIP:    subnetAddr(biz, 10+n),
			MgmtIf:   mgmtIf,
			BizIf:    bizIf,
			MgmtVeth: fmt.Sprintf("%sh%dm", cfg.Prefix, n),
			BizVeth:  fmt.Sprintf("%sh%db", cfg.Prefix, n),
			// Named after the netns so Cleanup can recognise the mounts
			// of orphaned daemons by path alone.
			Dir:      filepath.Join(cfg.Dir, netns),
			HostUUID: randomUUID(),
			log:      cfg.Log,
		})
	}
	return l
}

// createBridges picks the lab's subnets and creates its two bridges, under a
// lock so that two labs built at once never pick the same subnets. On error
// it returns the lab laid out so far (nil if none) for the caller to tear
// down.
func createBridges(ctx context.Context, cfg Config) (*Lab, error) {
	f, err := os.OpenFile(subnetLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)

	x, err := freeSubnets(ctx)
	if err != nil {
		return nil, err
	}
	l := newLab(cfg, x)
	cfg.Log("lab %s: bridges %s (%s) and %s (%s)", cfg.Prefix, l.MgmtBridge, l.MgmtSubnet, l.BizBridge, l.BizSubnet)
	mgmtAddrs := append([]string{l.MgmtBridgeIP}, l.ServerIPs...)
	err = addBridge(ctx, l.MgmtBridge, mgmtAddrs)
	if err == nil {
		err = addBridge(ctx, l.BizBridge, []string{l.BizBridgeIP})
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return nil, errors.Join(err, Cleanup(cctx, cfg.Prefix))
	}
	return l, nil
}

func (l *Lab) build(ctx context.Context) error {
	log := l.Cfg.Log
	if err := l.createShared(); err != nil {
		return err
	}
	for _, h := range l.Hosts {
		log("lab %s: host %s netns %s mgmt %s biz %s", l.Cfg.Prefix, h.Name, h.Netns, h.MgmtIP, h.BizIP)
		if err := h.createDirs(l.LockspaceDir()); err != nil {
			return err
		}
		if err := h.createNetns(ctx, l.MgmtBridge, l.BizBridge); err != nil {
			return err
		}
	}
	for _, h := range l.Hosts {
		if err := h.startDaemons(ctx); err != nil {
			return err
		}
	}
	// Wait for all at once: each libvirtd probes qemu on its first start.
	var wg sync.WaitGroup
	errs := make([]error, len(l.Hosts))
	for i, h := range l.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.waitLibvirtd(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log("lab %s: %d hosts up", l.Cfg.Prefix, len(l.Hosts))
	return nil
}

// createShared empties the shared storage and creates its images and
// lockspace directories. Up runs it after Cleanup, so no virtlockd of an
// earlier lab of this prefix holds a lease in it any more.
func (l *Lab) createShared() error {
	if err := os.RemoveAll(l.SharedDir); err != nil {
		return fmt.Errorf("reset shared storage: %w", err)
	}
	for _, d := range []string{l.ImagesDir(), l.LockspaceDir()} {
		// 0700: virtlockd creates its lockspace so, and leases are root's.
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("shared storage: %w", err)
		}
	}
	return nil
}

// diskNameRE keeps disk image names to a plain file name.
var diskNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// CreateDisk creates an empty qcow2 image of sizeMiB in ImagesDir with
// qemu-img and returns its absolute path, the same on every host.
func (l *Lab) CreateDisk(ctx context.Context, name string, sizeMiB int) (string, error) {
	if !diskNameRE.MatchString(name) {
		return "", fmt.Errorf("create disk: name %q: want 1-63 lower-case letters, digits, '.', '_' or '-'", name)
	}
	if sizeMiB < 1 {
		return "", fmt.Errorf("create disk %s: size %d MiB: must be at least 1", name, sizeMiB)
	}
	path := filepath.Join(l.ImagesDir(), name+".qcow2")
	if _, err := os.Stat(path); err == nil {
		return "", fmt.Errorf("create disk %s: %s exists", name, path)
	}
	if err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", path, strconv.Itoa(sizeMiB)+"M"); err != nil {
		return "", fmt.Errorf("create disk %s: %w", name, err)
	}
	l.Cfg.Log("lab %s: disk %s (%d MiB)", l.Cfg.Prefix, path, sizeMiB)
	return path, nil
}

// SANDir is where every host sees its device nodes of the lab's LUNs
// (CreateLUN): its own Dir/san, bind-mounted there. Under /dev, as real
// LUNs are, so that chime's driver renders them as block devices.
const SANDir = "/dev/chime-lab-san"

// sanSub is the per-host directory bind-mounted over SANDir.
const sanSub = "san"

// CreateLUN simulates a LUN of a SAN: a block device every host reaches
// through a device node of its own at the same path (SANDir/name), as
// hypervisors see one LUN as /dev/mapper/… each. The host's processes
// (libvirtd, qemu) see the node; the root namespace, where agents run,
// does not. It is a loop device over a
// file in ImagesDir. Being distinct inodes, the nodes share no file lock
// (qemu's own image lock sees nothing of the other host), so only the
// lockspace on the shared storage keeps two hosts off the LUN, as on a real
// SAN. Cleanup detaches the loop device. It returns the path to give
// libvirt (<disk type='block'><source dev=…/>).
func (l *Lab) CreateLUN(ctx context.Context, name string, sizeMiB int) (string, error) {
	if !diskNameRE.MatchString(name) {
		return "", fmt.Errorf("create lun: name %q: want 1-63 lower-case letters, digits, '.', '_' or '-'", name)
	}
	if sizeMiB < 1 {
		return "", fmt.Errorf("create lun %s: size %d MiB: must be at least 1", name, sizeMiB)
	}
	backing := filepath.Join(l.ImagesDir(), l.Cfg.Prefix+lunInfix+name+".img")
	f, err := os.OpenFile(backing, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("create lun %s: %w", name, err)
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("create lun %s: %w", name, err)
	}
	out, err := output(ctx, "losetup", "--find", "--show", backing)
	if err != nil {
		return "", fmt.Errorf("create lun %s: %w", name, err)
	}
	dev := strings.TrimSpace(string(out))
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		return "", fmt.Errorf("create lun %s: %s: %w", name, dev, err)
	}
	for _, h := range l.Hosts {
		if err := syscall.Mknod(filepath.Join(h.Dir, sanSub, name), syscall.S_IFBLK|0o600, int(st.Rdev)); err != nil {
			return "", fmt.Errorf("create lun %s on %s: %w", name, h.Name, err)
		}
	}
	l.Cfg.Log("lab %s: lun %s (%d MiB) on %s, %s on every host", l.Cfg.Prefix, name, sizeMiB, dev, filepath.Join(SANDir, name))
	return filepath.Join(SANDir, name), nil
}

// CreateQcow2LUN is CreateLUN holding a qcow2 image (qemu-img writes its
// header onto the loop device): a small VM disk on the lab's SAN that
// libvirt live-migrates (a block disk with cache='none' is shared storage
// to libvirt; an image file on the lab's local directory is not). The
// device node is named name.qcow2, so that chime's driver opens it as
// qcow2 (<driver type='qcow2'/>). The image's virtual size is sizeMiB, the
// LUN twice that: room for qcow2's metadata, and a capacity that tells
// whether qemu reads the device as qcow2 (sizeMiB) or raw (2*sizeMiB).
func (l *Lab) CreateQcow2LUN(ctx context.Context, name string, sizeMiB int) (string, error) {
	if !diskNameRE.MatchString(name + ".qcow2") {
		return "", fmt.Errorf("create qcow2 lun: name %q: want 1-56 lower-case letters, digits, '.', '_' or '-'", name)
	}
	if sizeMiB < 1 {
		return "", fmt.Errorf("create qcow2 lun %s: size %d MiB: must be at least 1", name, sizeMiB)
	}
	dev, err := l.CreateLUN(ctx, name+".qcow2", 2*sizeMiB)
	if err != nil {
		return "", err
	}
	loop, err := l.lunLoop(ctx, name+".qcow2")
	if err != nil {
		return "", fmt.Errorf("create qcow2 lun %s: %w", name, err)
	}
	if err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", loop, strconv.Itoa(sizeMiB)+"M"); err != nil {
		return "", fmt.Errorf("create qcow2 lun %s: %w", name, err)
	}
	return dev, nil
}

// lunLoop is the loop device (in the root namespace) of the LUN name.
func (l *Lab) lunLoop(ctx context.Context, name string) (string, error) {
	backing := filepath.Join(l.ImagesDir(), l.Cfg.Prefix+lunInfix+name+".img")
	out, err := output(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", backing)
	if err != nil {
		return "", fmt.Errorf("loop device of %s: %w", backing, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 1 {
		return "", fmt.Errorf("loop device of %s: losetup says %q, want one device", backing, out)
	}
	return fields[0], nil
}

// Down kills every process of the lab's hosts (qemu, libvirtd, virtlogd,
// virtlockd) and deletes the namespaces, links and bridges. It keeps Dir
// (logs, shared storage) and is idempotent.
func (l *Lab) Down(ctx context.Context) error {
	l.Cfg.Log("lab %s: down", l.Cfg.Prefix)
	return Cleanup(ctx, l.Cfg.Prefix)
}

// Host returns the host named name ("hv1"), or nil.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// ServerAddr returns "ip:port" of chime server i (0-based) on the management
// bridge.
func (l *Lab) ServerAddr(i, port int) string {
	return joinHostPort(l.ServerIPs[i], port)
}

func addBridge(ctx context.Context, name string, addrs []string) error {
	if err := run(ctx, "ip", "link", "add", name, "type", "bridge", "forward_delay", "0"); err != nil {
		return fmt.Errorf("create bridge %s: %w", name, err)
	}
	disableIPv6(name)
	for _, a := range addrs {
		if err := run(ctx, "ip", "addr", "add", a+"/24", "dev", name); err != nil {
			return fmt.Errorf("address bridge %s: %w", name, err)
		}
	}
	if err := run(ctx, "ip", "link", "set", name, "up"); err != nil {
		return fmt.Errorf("bridge %s up: %w", name, err)
	}
	return nil
}

// disableIPv6 keeps router solicitations and DAD off the lab bridges; it is
// noise reduction only, so a failure is ignored.
func disableIPv6(ifname string) {
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0o644)
}

// freeSubnets returns the lowest index X whose lab subnets no route of the
// machine covers: a lab must neither capture nor leak traffic of a network
// that exists already.
func freeSubnets(ctx context.Context) (int, error) {
	out, err := output(ctx, "ip", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return 0, fmt.Errorf("parse routes: %w", err)
	}
	var taken []netip.Prefix
	for _, r := range routes {
		if r.Dst == "" || r.Dst == "default" {
			continue
		}
		dst := r.Dst
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			taken = append(taken, p)
		}
	}
	clashes := func(s netip.Prefix) bool {
		for _, p := range taken {
			if p.Overlaps(s) {
				return true
			}
		}
		return false
	}
	for x := 0; x < maxSubnets; x++ {
		if !clashes(labSubnet(mgmtOctet, x)) && !clashes(labSubnet(bizOctet, x)) {
			return x, nil
		}
	}
	return 0, fmt.Errorf("no free lab subnets: routes of the machine cover 10.%d.0-%d.0/24 or 10.%d.0-%d.0/24", mgmtOctet, maxSubnets-1, bizOctet, maxSubnets-1)
}

func labSubnet(octet, x int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(octet), byte(x), 0}), 24)
}

func subnetAddr(subnet netip.Prefix, n int) string {
	a := subnet.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a).String()
}

func joinHostPort(ip string, port int) string {
	return ip + ":" + strconv.Itoa(port)
}

func randomUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// run runs a command and folds its output into the error.
func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
