// Package health runs the agent's local checks (business network probes,
// storage write probes, disk I/O errors in the kernel log) and keeps the
// faults they find for the heartbeat. Each check's decision is a plain
// function (businessFault, storageFault, classifyKmsgLine); Checker only
// gathers inputs on a ticker and keeps the current fault set.
package health

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
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
	// ProbeFile is the file the storage probe writes in every storage path.
	ProbeFile = ".chime-probe"
	// MaxStoragePaths is how many storage paths may be probed.
	MaxStoragePaths    = 16
	maxDiskErrorFaults = 8
	maxFaultLen        = 200
)

// Fault strings. They must be stable from one check to the next (no
// timestamps, sector numbers or changing error texts): the servers see a
// changed fault list as a change of the node's state.
const (
	faultBusinessPrefix = "business network unreachable: "
	faultDiskPrefix     = "disk I/O error: "
	faultDiskMore       = faultDiskPrefix + "more devices"
)

// Clock is the checks' time: Now for the disk-error hold, NewTimer for the
// storage probe's timeout, NewTicker for Run's rounds.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) clock.Timer
	NewTicker(d time.Duration) clock.Ticker
}

// Config configures the local health checks. Zero fields take their
// defaults.
type Config struct {
	Interval          time.Duration // period of the business and storage probes
	BusinessInterface string        // "" disables the business check
	BusinessProbes    []string      // HOST[:PORT] targets, connected to through BusinessInterface
	ProbeTimeout      time.Duration // per TCP connect (default 5 s, at most Interval)
	StoragePaths      []string      // directories given the write+fsync+read-back probe
	StorageTimeout    time.Duration // a probe not done by then is a fault (default 10 s, at most Interval)
	KmsgPath          string        // kernel log to follow (default /dev/kmsg; "-" disables)
	DiskErrorHold     time.Duration // how long a kernel I/O error line keeps its fault
	Clock             Clock         // nil: the wall clock
	// StorageProbe probes one storage path (default: write, fsync and read
	// back a file in it). It may be called for several paths at once.
	StorageProbe func(dir string) error
	// BusinessNet is what the business check reads and dials (default: the
	// kernel's interface flags and a TCP connect bound to the interface).
	// Dial may be called for several targets at once.
	BusinessNet BusinessNet
	Logger      hclog.Logger
	Changed     func() // called (without locks held) when the fault set changes
}

// Checker runs the agent's local checks and keeps the resulting faults.
type Checker struct {
	cfg Config
	log hclog.Logger

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

// New returns the checks described by cfg; Run drives them.
func New(cfg Config) *Checker {
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
	if cfg.Clock == nil {
		cfg.Clock = clock.Wall{}
	}
	if cfg.StorageProbe == nil {
		cfg.StorageProbe = writeProbe
	}
	if cfg.BusinessNet == nil {
		cfg.BusinessNet = KernelNet{}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	return &Checker{cfg: cfg, log: cfg.Logger,
		storage: map[string]string{}, inflight: map[string]*storageRun{}, diskErrors: map[string]time.Time{}}
}

// Faults returns the current faults, sorted. Disk I/O errors from the
// kernel log are included while their hold time lasts.
func (h *Checker) Faults() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.faultsLocked(h.cfg.Clock.Now())
}

func (h *Checker) faultsLocked(now time.Time) []string {
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
func (h *Checker) Run(ctx context.Context) {
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
	probe := h.cfg.Clock.NewTicker(h.cfg.Interval)
	defer probe.Stop()
	kmsgTick := h.cfg.Clock.NewTicker(kmsgPollInterval)
	defer kmsgTick.Stop()
	buf := make([]byte, 16<<10)
	for {
		select {
		case <-ctx.Done():
			return
		case <-probe.C():
			h.Check(ctx)
		case <-kmsgTick.C():
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
func (h *Checker) Check(ctx context.Context) {
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

func (h *Checker) notifyIfChanged() {
	h.mu.Lock()
	now := h.faultsLocked(h.cfg.Clock.Now())
	changed := !slices.Equal(now, h.reported)
	h.reported = now
	h.mu.Unlock()
	if changed {
		h.log.Info("health faults changed", "faults", now)
		h.cfg.Changed()
	}
}

func (h *Checker) warnKmsg(err error) {
	h.mu.Lock()
	first := !h.kmsgDisabled
	h.kmsgDisabled = true
	h.mu.Unlock()
	if first {
		h.log.Warn("cannot follow the kernel log; disk I/O errors are detected by the storage probes only",
			"path", h.cfg.KmsgPath, "error", err)
	}
}
