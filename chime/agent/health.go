package agent

// Local health checks: the faults an agent reports in its heartbeat besides
// "libvirtd unreachable". Each check's decision is a plain function
// (businessFault, storageFault, classifyKmsgLine); Health only gathers
// inputs on a ticker and keeps the current fault set.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Health defaults.
const (
	DefaultBusinessProbeInterval = 30 * time.Second
	DefaultDiskErrorHold         = 10 * time.Minute
	DefaultBusinessProbePort     = "22"
	defaultProbeTimeout          = 5 * time.Second
	defaultStorageTimeout        = 10 * time.Second
	defaultKmsgPath              = "/dev/kmsg"
	kmsgPollInterval             = 2 * time.Second
	probeFile                    = ".chime-probe"
	maxStoragePaths              = 16
	maxDiskErrorFaults           = 8
	maxFaultLen                  = 200
)

// Fault strings. They must be stable from one check to the next (no
// timestamps, sector numbers or changing error texts): the servers see a
// changed fault list as a change of the node's state.
const (
	faultBusinessPrefix = "business network unreachable: "
	faultDiskPrefix     = "disk I/O error: "
	faultDiskMore       = faultDiskPrefix + "more devices"
)

// HealthConfig configures the local health checks. Zero fields take their
// defaults.
type HealthConfig struct {
	Interval          time.Duration    // period of the business and storage probes
	BusinessInterface string           // "" disables the business check
	BusinessProbes    []string         // HOST[:PORT] targets, connected to through BusinessInterface
	ProbeTimeout      time.Duration    // per TCP connect (default 5 s, at most Interval)
	StoragePaths      []string         // directories given the write+fsync+read-back probe
	StorageTimeout    time.Duration    // a probe not done by then is a fault (default 10 s, at most Interval)
	KmsgPath          string           // kernel log to follow (default /dev/kmsg; "-" disables)
	DiskErrorHold     time.Duration    // how long a kernel I/O error line keeps its fault
	Now               func() time.Time // time source for the hold (default time.Now)
	Logger            hclog.Logger
	Changed           func() // called (without locks held) when the fault set changes
}

// Health runs the agent's local checks and keeps the resulting faults.
type Health struct {
	cfg HealthConfig
	log hclog.Logger

	// probeStorage is the storage probe (writeProbe); tests replace it.
	probeStorage func(dir string) error

	mu           sync.Mutex
	business     string                 // current business-network fault ("" = none)
	storage      map[string]string      // dir -> current fault of its probe
	inflight     map[string]*storageRun // dir -> probe started and not yet returned (possibly hung)
	diskErrors   map[string]time.Time   // disk fault -> time of the last matching kernel line
	failing      string                 // targets failing in the last round, for logging changes only
	reported     []string               // fault set as of the last Changed call
	kmsgDisabled bool                   // the kernel log could not be followed (warned once)
}

// storageRun is one storage probe goroutine. A probe stuck in the kernel
// (a hung NFS mount) cannot be cancelled: it is abandoned, and no second
// probe is started on that path until it returns, so at most one goroutine
// per path is ever stuck.
type storageRun struct {
	done chan struct{} // closed when the probe returned
	err  error         // valid after done
}

// NewHealth returns the checks described by cfg; Run drives them.
func NewHealth(cfg HealthConfig) *Health {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultBusinessProbeInterval
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = defaultProbeTimeout
	}
	cfg.ProbeTimeout = min(cfg.ProbeTimeout, cfg.Interval)
	if cfg.StorageTimeout <= 0 {
		cfg.StorageTimeout = defaultStorageTimeout
	}
	cfg.StorageTimeout = min(cfg.StorageTimeout, cfg.Interval)
	if cfg.KmsgPath == "" {
		cfg.KmsgPath = defaultKmsgPath
	}
	if cfg.DiskErrorHold <= 0 {
		cfg.DiskErrorHold = DefaultDiskErrorHold
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	return &Health{cfg: cfg, log: cfg.Logger, probeStorage: writeProbe,
		storage: map[string]string{}, inflight: map[string]*storageRun{}, diskErrors: map[string]time.Time{}}
}

// Faults returns the current faults, sorted. Disk I/O errors from the
// kernel log are included while their hold time lasts.
func (h *Health) Faults() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.faultsLocked(h.cfg.Now())
}

func (h *Health) faultsLocked(now time.Time) []string {
	out := []string{}
	if h.business != "" {
		out = append(out, h.business)
	}
	for _, f := range h.storage {
		if f != "" {
			out = append(out, f)
		}
	}
	for f, last := range h.diskErrors {
		if now.Sub(last) < h.cfg.DiskErrorHold {
			out = append(out, f)
		} else {
			delete(h.diskErrors, f)
		}
	}
	slices.Sort(out)
	// Leave room for the agent's own fault within the heartbeat's limit.
	if len(out) > structs.MaxFaults-1 {
		out = out[:structs.MaxFaults-1]
	}
	return out
}

// Run runs the checks until ctx ends: the probes every Interval (the first
// at once), the kernel log every few seconds.
func (h *Health) Run(ctx context.Context) {
	kmsg := -1
	if h.cfg.KmsgPath != "-" {
		fd, err := openKmsg(h.cfg.KmsgPath)
		if err != nil {
			h.warnKmsg(err)
		} else {
			kmsg = fd
			defer func() { unix.Close(kmsg) }()
		}
	}
	h.log.Info("health checks starting", "interval", h.cfg.Interval.String(),
		"business_interface", h.cfg.BusinessInterface, "business_probes", len(h.cfg.BusinessProbes),
		"storage_paths", h.cfg.StoragePaths, "kernel_log", kmsg >= 0)
	h.Check(ctx)
	probe := time.NewTicker(h.cfg.Interval)
	defer probe.Stop()
	kmsgTick := time.NewTicker(kmsgPollInterval)
	defer kmsgTick.Stop()
	buf := make([]byte, 16<<10)
	for {
		select {
		case <-ctx.Done():
			return
		case <-probe.C:
			h.Check(ctx)
		case <-kmsgTick.C:
			if kmsg < 0 {
				continue
			}
			if err := drainKmsg(kmsg, buf, h.noteKmsg); err != nil {
				h.warnKmsg(err)
				unix.Close(kmsg)
				kmsg = -1
			}
			h.notifyIfChanged()
		}
	}
}

// Check runs one round of the business and storage probes (in parallel)
// and reports a changed fault set.
func (h *Health) Check(ctx context.Context) {
	var wg sync.WaitGroup
	if h.cfg.BusinessInterface != "" {
		wg.Go(func() { h.checkBusiness(ctx) })
	}
	for _, dir := range h.cfg.StoragePaths {
		wg.Go(func() { h.checkStorage(ctx, dir) })
	}
	wg.Wait()
	h.notifyIfChanged()
}

func (h *Health) notifyIfChanged() {
	h.mu.Lock()
	now := h.faultsLocked(h.cfg.Now())
	changed := !slices.Equal(now, h.reported)
	h.reported = now
	h.mu.Unlock()
	if changed {
		h.log.Info("health faults changed", "faults", now)
		h.cfg.Changed()
	}
}

func (h *Health) warnKmsg(err error) {
	h.mu.Lock()
	first := !h.kmsgDisabled
	h.kmsgDisabled = true
	h.mu.Unlock()
	if first {
		h.log.Warn("cannot follow the kernel log; disk I/O errors are detected by the storage probes only",
			"path", h.cfg.KmsgPath, "error", err)
	}
}

// --- business network ---

// probeResult is the outcome of one TCP connect to a business probe target.
type probeResult struct {
	Target string
	Err    error // nil: connected
}

// linkState is the business interface's state as the kernel reports it.
type linkState struct {
	Up     bool
	Reason string // why not Up, e.g. "interface eth1 is down"
}

func (h *Health) checkBusiness(ctx context.Context) {
	link := readLink(h.cfg.BusinessInterface)
	var results []probeResult
	if link.Up {
		results = probeTargets(ctx, h.cfg.BusinessInterface, h.cfg.BusinessProbes, h.cfg.ProbeTimeout)
	}
	fault := businessFault(link, results)
	var failed []string
	for _, r := range results {
		if !probeAnswered(r.Err) {
			failed = append(failed, r.Target+": "+r.Err.Error())
		}
	}
	failing := strings.Join(failed, "; ")
	h.mu.Lock()
	h.business = fault
	// With the link down no target was probed; the fault itself is logged
	// by notifyIfChanged.
	logChange := link.Up && failing != h.failing
	if link.Up {
		h.failing = failing
	}
	h.mu.Unlock()
	switch {
	case !logChange:
	case failing == "":
		h.log.Info("every business probe target answers again")
	case fault == "":
		h.log.Warn("some business probe targets do not answer", "interface", h.cfg.BusinessInterface, "failed", failed)
	default:
		h.log.Warn("no business probe target answers", "interface", h.cfg.BusinessInterface, "failed", failed)
	}
}

// businessFault decides the business-network fault: the interface missing
// or down, or every target failing. Some targets failing is not a fault
// (a single target may be down for maintenance). The reason names the
// kind of error, never the changing error text.
func businessFault(link linkState, results []probeResult) string {
	if !link.Up {
		return faultBusinessPrefix + link.Reason
	}
	if len(results) == 0 {
		return ""
	}
	var kinds []string
	for _, r := range results {
		if probeAnswered(r.Err) {
			return ""
		}
		if k := errKind(r.Err); !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	kind := "mixed errors"
	if len(kinds) == 1 {
		kind = kinds[0]
	}
	return faultBusinessPrefix + "no probe target answered (" + kind + ")"
}

// probeAnswered reports whether a connect attempt proves the target
// reachable. A refused connection does: the target's RST came back over
// the business network, so any port will do as a target.
func probeAnswered(err error) bool {
	return err == nil || errors.Is(err, syscall.ECONNREFUSED)
}

// errKind names the kind of a failed connect in a few stable words.
func errKind(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ENODEV):
		return "no such interface"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "permission denied"
	case errors.As(err, &dnsErr):
		return "name resolution failed"
	}
	return "connect failed"
}

// readLink reads the interface's flags over netlink: administratively up
// (IFF_UP) and operationally up (IFF_RUNNING: carrier, operstate up or
// unknown).
func readLink(name string) linkState {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		if strings.Contains(err.Error(), "no such network interface") {
			return linkState{Reason: "interface " + name + " not found"}
		}
		return linkState{Reason: "interface " + name + ": " + err.Error()}
	}
	switch {
	case ifi.Flags&net.FlagUp == 0:
		return linkState{Reason: "interface " + name + " is down"}
	case ifi.Flags&net.FlagRunning == 0:
		return linkState{Reason: "interface " + name + " has no carrier"}
	}
	return linkState{Up: true}
}

// probeTargets connects to every target in parallel through iface.
func probeTargets(ctx context.Context, iface string, targets []string, timeout time.Duration) []probeResult {
	results := make([]probeResult, len(targets))
	var wg sync.WaitGroup
	for i, target := range targets {
		wg.Go(func() {
			results[i] = probeResult{Target: target, Err: dialThrough(ctx, iface, target, timeout)}
		})
	}
	wg.Wait()
	return results
}

// dialThrough opens a TCP connection to target with the socket bound to
// iface (SO_BINDTODEVICE, needs CAP_NET_RAW), so that it cannot succeed
// over the management network, and closes it again.
func dialThrough(ctx context.Context, iface, target string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout, Control: func(_, _ string, c syscall.RawConn) error {
		var bindErr error
		if err := c.Control(func(fd uintptr) { bindErr = unix.BindToDevice(int(fd), iface) }); err != nil {
			return err
		}
		if bindErr != nil {
			return fmt.Errorf("bind to %s: %w", iface, bindErr)
		}
		return nil
	}}
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	return conn.Close()
}

// normalizeProbeTarget turns HOST or HOST:PORT into HOST:PORT (port 22
// when omitted; a bare IPv6 address is a HOST).
func normalizeProbeTarget(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty target")
	}
	host, port, err := net.SplitHostPort(s)
	switch {
	case err == nil:
	case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"): // [IPv6]
		host, port = s[1:len(s)-1], DefaultBusinessProbePort
	case strings.Count(s, ":") == 0, net.ParseIP(s) != nil: // a name, an IPv4 or a bare IPv6 address
		host, port = s, DefaultBusinessProbePort
	default:
		return "", fmt.Errorf("%q is not HOST or HOST:PORT", s)
	}
	if host == "" {
		return "", fmt.Errorf("%q has no host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not 1-65535", s, port)
	}
	return net.JoinHostPort(host, port), nil
}

// --- storage ---

func (h *Health) checkStorage(ctx context.Context, dir string) {
	h.mu.Lock()
	run := h.inflight[dir]
	if run == nil {
		run = &storageRun{done: make(chan struct{})}
		h.inflight[dir] = run
		go func() {
			// Not owned by a WaitGroup on purpose: a probe stuck in the
			// kernel never returns, and must not hang the agent with it.
			defer close(run.done)
			run.err = h.probeStorage(dir)
		}()
	}
	h.mu.Unlock()

	t := time.NewTimer(h.cfg.StorageTimeout)
	defer t.Stop()
	var err error
	select {
	case <-ctx.Done():
		return
	case <-run.done:
		err = run.err
		h.mu.Lock()
		delete(h.inflight, dir)
		h.mu.Unlock()
	case <-t.C:
		err = fmt.Errorf("probe did not finish within %s", h.cfg.StorageTimeout)
	}
	fault := storageFault(dir, err)
	h.mu.Lock()
	prev := h.storage[dir]
	h.storage[dir] = fault
	h.mu.Unlock()
	if fault != prev && fault != "" {
		h.log.Warn("storage probe failed", "path", dir, "error", err)
	} else if fault != prev {
		h.log.Info("storage probe succeeds again", "path", dir)
	}
}

// storageFault is the fault for a storage probe's outcome ("" when it
// succeeded).
func storageFault(dir string, err error) string {
	if err == nil {
		return ""
	}
	return truncateFault(fmt.Sprintf("storage path %s not writable: %v", dir, err))
}

// writeProbe writes a fresh random token to dir/.chime-probe, fsyncs it and
// reads it back.
func writeProbe(dir string) error {
	var token [16]byte
	_, _ = rand.Read(token[:])
	want := []byte("chime storage probe " + hex.EncodeToString(token[:]) + "\n")
	path := filepath.Join(dir, probeFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(want); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("read back from %s differs from what was written", path)
	}
	return nil
}

// --- kernel log ---

// kmsgPatterns match kernel messages that report a failed disk I/O. The
// group "dev" names the device when the message does.
var kmsgPatterns = []*regexp.Regexp{
	// blk_update_request / print_req_error / end_request
	regexp.MustCompile(`(?:I/O|critical medium|critical target) error, dev (?P<dev>[^\s,]+)`),
	regexp.MustCompile(`Buffer I/O error on dev(?:ice)? (?P<dev>[^\s,]+)`),
	regexp.MustCompile(`EXT[234]-fs error \(device (?P<dev>[^\s)]+)\)`),
	regexp.MustCompile(`XFS \((?P<dev>[^)\s]+)\):.*I/O error`),
	regexp.MustCompile(`BTRFS error \(device (?P<dev>[^\s)]+)`),
	regexp.MustCompile(`Aborting journal on device (?P<dev>[^\s]+?)(?:-\d+)?\.?$`),
	// anything else that says so
	regexp.MustCompile(`I/O error`),
}

// kmsgIgnoredDevices are devices whose errors say nothing about the
// storage VMs use: optical drives and floppies of virtual machines (empty
// drives log I/O errors when probed), and loop devices.
var kmsgIgnoredDevices = regexp.MustCompile(`^(?:sr|fd|loop)\d+(?:p\d+)?$`)

var kmsgDigits = regexp.MustCompile(`\d+`)

// classifyKmsgLine decides whether one /dev/kmsg record
// ("PRIO,SEQ,USEC,FLAGS;MESSAGE") reports a disk I/O error, and returns the
// fault. Only kernel-facility records count: user space cannot log with
// that facility, so nobody can fake a disk error by writing to /dev/kmsg.
func classifyKmsgLine(line string) (fault string, ok bool) {
	prefix, msg, found := strings.Cut(line, ";")
	if !found || strings.HasPrefix(line, " ") {
		return "", false
	}
	prioField, _, _ := strings.Cut(prefix, ",")
	prio, err := strconv.Atoi(prioField)
	if err != nil || prio>>3 != 0 {
		return "", false
	}
	msg = strings.TrimSpace(msg)
	for _, re := range kmsgPatterns {
		m := re.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		if i := re.SubexpIndex("dev"); i > 0 {
			dev := strings.TrimPrefix(m[i], "/dev/")
			if kmsgIgnoredDevices.MatchString(dev) {
				return "", false
			}
			return faultDiskPrefix + dev, true
		}
		// No device named: the message itself, with numbers masked so that
		// repeated lines give the same fault.
		return truncateFault(faultDiskPrefix + kmsgDigits.ReplaceAllString(msg, "N")), true
	}
	return "", false
}

// noteKmsg records one kernel log record.
func (h *Health) noteKmsg(line string) {
	fault, ok := classifyKmsgLine(line)
	if !ok {
		return
	}
	now := h.cfg.Now()
	h.mu.Lock()
	_, known := h.diskErrors[fault]
	if !known && len(h.diskErrors) >= maxDiskErrorFaults {
		fault = faultDiskMore
		_, known = h.diskErrors[fault]
	}
	h.diskErrors[fault] = now
	h.mu.Unlock()
	if !known {
		_, msg, _ := strings.Cut(line, ";")
		h.log.Warn("disk I/O error in the kernel log", "fault", fault, "message", msg, "hold", h.cfg.DiskErrorHold.String())
	}
}

// openKmsg opens the kernel log for non-blocking reads from its current
// end, so that messages logged before the agent started do not count.
func openKmsg(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seek to the end of %s: %w", path, err)
	}
	return fd, nil
}

// drainKmsg reads every record available on the non-blocking fd and hands
// each to fn; it returns when none is left. /dev/kmsg returns one record per
// read (buf must hold the largest, 8 KiB); continuation lines (" KEY=VALUE")
// are skipped. Records overwritten before they were read (EPIPE) are lost,
// and reading goes on.
func drainKmsg(fd int, buf []byte, fn func(record string)) error {
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EPIPE), errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("read kernel log: %w", err)
		case n == 0:
			return nil
		}
		for line := range strings.SplitSeq(string(buf[:n]), "\n") {
			if line != "" && !strings.HasPrefix(line, " ") {
				fn(line)
			}
		}
	}
}

func truncateFault(s string) string {
	if len(s) <= maxFaultLen {
		return s
	}
	return s[:maxFaultLen]
}

// --- configuration ---

// healthConfig derives the health checks' configuration from the agent's.
// The data dir is always probed, before the configured storage paths.
func (c Config) healthConfig(changed func()) HealthConfig {
	var targets []string
	for _, p := range c.BusinessProbes {
		if t, err := normalizeProbeTarget(p); err == nil {
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
	return HealthConfig{
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
		if _, err := normalizeProbeTarget(p); err != nil {
			bad("business-probe", "%v", err)
		}
	}
	if len(c.StoragePaths) > maxStoragePaths {
		bad("storage-path", "at most %d paths", maxStoragePaths)
	}
	for _, p := range c.StoragePaths {
		if !filepath.IsAbs(p) {
			bad("storage-path", "%q is not an absolute path", p)
		}
	}
}
