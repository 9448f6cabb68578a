package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chime-ha/chime/hypervisor"
	"github.com/google/uuid"
)

// The simulated hypervisor: one per simulated host. It is the world chime's
// agent drives, not a model of chime: its methods follow the contracts of
// the real libvirt driver (package hypervisor, driver.go and domains.go) and
// of libvirt underneath it, so that the agent's reconciler and hand-over code
// run against it unchanged.
//
// Time: every call completes at the current simulated instant. The
// simulator is single-threaded, so nothing can happen "during" a call; what
// the real driver does over time inside one call is collapsed to its end
// state. In particular Shutdown of a guest that honours ACPI powers it off
// at once, Shutdown of one that ignores ACPI (SetIgnoresACPI) destroys it as
// the driver does when the grace period runs out, and a live migration is
// one atomic hand-over. Events are stamped with the clock given at
// construction and emitted in call order.
//
// Concurrency: the agent runs some calls in goroutines of its own (guest
// shutdowns, ordered migrations), so a Hypervisor is safe for concurrent
// use. Nothing in it starts a goroutine or reads the wall clock.

// Op names a call of the driver's API, as the fault hook sees it.
type Op string

// The faultable calls.
const (
	OpList     Op = "list"
	OpGet      Op = "get"
	OpDefine   Op = "define"
	OpStart    Op = "start"
	OpShutdown Op = "shutdown"
	OpDestroy  Op = "destroy"
	OpUndefine Op = "undefine"
	OpMigrate  Op = "migrate"
	OpCapacity Op = "capacity"
	OpHostUUID Op = "hostuuid"
)

// Call is one call of the driver's API on one host.
type Call struct {
	Host string // the hypervisor's name
	Op   Op
	UUID string // the domain the call names, as given; "" for list and capacity
}

// Fault is what the fault hook decides for one call.
type Fault struct {
	// Err, when not nil, is returned by the call (wrapped as the driver
	// wraps its errors, so errors.Is still finds sentinels in it).
	Err error
	// Applied: the call took effect (with its events) before it failed,
	// as when libvirtd carried it out and the reply was lost. Without it
	// the call fails before it changes anything.
	Applied bool
}

// FaultFunc decides whether a call fails; the zero Fault lets it through.
// It is called with the hypervisor's lock held: it must not call the
// Hypervisor.
type FaultFunc func(Call) Fault

// MigrationOutcome is how a live migration ends, once every precondition
// (running domain, reachable and connected destination, no conflicting
// domain there) holds.
type MigrationOutcome int

// Migration outcomes.
const (
	// MigrationSucceeds: the domain runs on the destination (reason
	// "migrated", same metadata) and is gone from the source.
	MigrationSucceeds MigrationOutcome = iota
	// MigrationFailsBefore: refused before anything moved; error.
	MigrationFailsBefore
	// MigrationFailsDuring: the transfer was aborted; the domain keeps
	// running at the source; error.
	MigrationFailsDuring
	// MigrationReplyLost: the hand-over happened as in MigrationSucceeds,
	// but the connection to the source libvirtd dropped before the reply:
	// the caller gets an error wrapping hypervisor.ErrDisconnected, the
	// source's lifecycle events of the hand-over are lost and its event
	// stream shows a disconnect and a reconnect instead.
	MigrationReplyLost
)

func (o MigrationOutcome) String() string {
	switch o {
	case MigrationSucceeds:
		return "succeeds"
	case MigrationFailsBefore:
		return "fails-before"
	case MigrationFailsDuring:
		return "fails-during"
	case MigrationReplyLost:
		return "reply-lost"
	}
	return fmt.Sprintf("outcome-%d", int(o))
}

// Migration describes a live migration whose outcome is being decided.
type Migration struct {
	UUID       string
	Generation uint64 // of the migrating domain's metadata; 0 for a foreign domain
	From, To   string // hypervisor names
}

// MigrationDecider picks a migration's outcome (the simulator draws it from
// its seed). It is called with both hypervisors locked: it must not call
// them.
type MigrationDecider func(Migration) MigrationOutcome

// World is what a Hypervisor needs of the simulated world to live-migrate:
// who listens at an address, and whether the migration path between two
// hosts is up. Its methods are called without any hypervisor lock held.
type World interface {
	// HypervisorAt returns the hypervisor of the host at addr (the host
	// part of a libvirt or migration URI), or nil when there is none.
	HypervisorAt(addr string) *Hypervisor
	// MigrationLinkUp reports whether the source host (by hypervisor name)
	// can reach the destination's libvirtd and qemu migration port at the
	// addresses the migration's URIs name (their host parts).
	MigrationLinkUp(from, to string, addrs ...string) bool
}

// HypervisorConfig configures a Hypervisor.
type HypervisorConfig struct {
	Name  string           // the host's name; required, unique in the world
	Clock func() time.Time // simulated time; required
	World World            // nil: every migration fails before it starts
	// VCPUs and MemoryMiB are what Capacity reports (libvirt's node info).
	VCPUs     int
	MemoryMiB int
	// EventBuffer is the capacity of the Events channel; when it is full
	// the oldest event is dropped and counted, as the driver does.
	// Default hypervisor.DefaultEventBuffer.
	EventBuffer int
	Fault       FaultFunc        // nil: no call fails by injection
	Migration   MigrationDecider // nil: every migration succeeds
	// UUIDSource is where the host's UUID (libvirt's <host><uuid>) is drawn
	// from, once, at the first HostUUID call; it is the host's for good
	// (a lost disk or a libvirtd restart keeps it, as host_uuid in
	// libvirtd.conf or the board's SMBIOS would). The simulator passes the
	// run's random source: the draw then happens where the agent used to
	// draw a random node id, so runs keep their sequence of draws. nil: a
	// name-based UUID.
	UUIDSource io.Reader
}

// lockOrder hands out the order in which hypervisors are locked together
// (migration, SnapshotRunning); it is never observable.
var lockOrder atomic.Uint64

// Hypervisor is one simulated host's libvirtd and qemu processes, together
// with the agent's connection to it. It implements reconcile.Hypervisor,
// handover.Hypervisor and agent.Hypervisor.
//
// It starts powered, with libvirtd up and the connection open. The
// simulator injects faults with Crash, Panic, GuestPowerOff, StopLibvirtd,
// StartLibvirtd, PowerOff and PowerOn, and models an agent restart with
// Close and Open (a new driver session: fresh event stream).
type Hypervisor struct {
	name   string
	clock  func() time.Time
	world  World
	vcpus  int
	memMiB int
	bufLen int
	fault  FaultFunc
	decide MigrationDecider
	order  uint64 // lock order among hypervisors
	uuids  io.Reader

	hostUUID string // drawn at the first HostUUID call

	mu          sync.Mutex
	domains     map[string]*domain // by canonical uuid
	ignoresACPI map[string]bool    // uuid → the guest ignores the ACPI power button
	powered     bool               // the host has power
	libvirtd    bool               // libvirtd is up (implies powered)
	open        bool               // the agent's driver session is open
	events      chan hypervisor.Event
	dropped     uint64 // events dropped from this session's full buffer
	touches     []Call // mutating calls that named a domain without chime metadata
}

// domain is one libvirt domain: a persistent definition, and the qemu
// process running it when active.
type domain struct {
	uuid     string
	name     string
	meta     *hypervisor.Meta      // nil: foreign, never chime's
	spec     hypervisor.DomainSpec // persistent definition; zero for a foreign domain
	active   bool                  // a qemu process exists
	state    string                // hypervisor.State*
	reason   string                // libvirt's state reason
	liveSpec hypervisor.DomainSpec // what the running qemu was started with
	since    time.Time             // when the running qemu started here
}

// NewHypervisor returns a powered host with libvirtd up, no domains, and an
// open connection.
func NewHypervisor(cfg HypervisorConfig) (*Hypervisor, error) {
	if cfg.Name == "" || cfg.Clock == nil {
		return nil, errors.New("sim hypervisor: name and clock are required")
	}
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = hypervisor.DefaultEventBuffer
	}
	return &Hypervisor{
		name: cfg.Name, clock: cfg.Clock, world: cfg.World,
		vcpus: cfg.VCPUs, memMiB: cfg.MemoryMiB, bufLen: cfg.EventBuffer,
		fault: cfg.Fault, decide: cfg.Migration, order: lockOrder.Add(1), uuids: cfg.UUIDSource,
		domains:     map[string]*domain{},
		ignoresACPI: map[string]bool{},
		powered:     true, libvirtd: true, open: true,
		events: make(chan hypervisor.Event, cfg.EventBuffer),
	}, nil
}

// Name is the host's name.
func (h *Hypervisor) Name() string { return h.name }

// ---- The driver's API (what the agent calls) ----

// Events returns the lifecycle and connection events of the current
// session. It is closed by Close and by PowerOff; after Open it is a new
// channel.
func (h *Hypervisor) Events() <-chan hypervisor.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.events
}

// DroppedEvents counts the events of the current session dropped because
// the Events buffer was full.
func (h *Hypervisor) DroppedEvents() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}

// Connected reports whether the session is open and libvirtd is up.
func (h *Hypervisor) Connected() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.connected()
}

// Capacity returns the host's CPU count and memory as configured.
func (h *Hypervisor) Capacity(ctx context.Context) (int, int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, err := h.enter(ctx, Call{Op: OpCapacity}, "node info")
	if err != nil {
		return 0, 0, fmt.Errorf("host capacity: %w", err)
	}
	if f.Err != nil {
		return 0, 0, fmt.Errorf("host capacity: %w", f.Err)
	}
	return h.vcpus, h.memMiB, nil
}

// HostUUID returns the host's UUID, as the driver reads it from libvirt's
// capabilities: drawn from the UUIDSource on the first call, the same ever
// after.
func (h *Hypervisor) HostUUID(ctx context.Context) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, err := h.enter(ctx, Call{Op: OpHostUUID}, "get capabilities")
	if err != nil {
		return "", fmt.Errorf("host uuid: %w", err)
	}
	if f.Err != nil {
		return "", fmt.Errorf("host uuid: %w", f.Err)
	}
	if h.hostUUID == "" {
		if h.uuids == nil {
			h.hostUUID = uuid.NewSHA1(uuid.NameSpaceOID, []byte("chime-sim-host:"+h.name)).String()
		} else {
			u, err := uuid.NewRandomFromReader(h.uuids)
			if err != nil {
				return "", fmt.Errorf("host uuid: %w", err)
			}
			h.hostUUID = u.String()
		}
	}
	return h.hostUUID, nil
}

// SetHostUUID gives the host another UUID (libvirtd's host_uuid changed, or
// a host cloned from another's image): the fault behind two agents claiming
// one node.
func (h *Hypervisor) SetHostUUID(u string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hostUUID = u
}

// List returns every domain, chime's or not, sorted by UUID. A running
// domain reports its live metadata.
func (h *Hypervisor) List(ctx context.Context) ([]hypervisor.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, err := h.enter(ctx, Call{Op: OpList}, "list domains")
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	if f.Err != nil {
		return nil, fmt.Errorf("list domains: %w", f.Err)
	}
	out := make([]hypervisor.Domain, 0, len(h.domains))
	for _, d := range h.sorted() {
		out = append(out, d.describe())
	}
	return out, nil
}

// Get returns one domain by UUID, or an error wrapping ErrNotFound.
func (h *Hypervisor) Get(ctx context.Context, id string) (*hypervisor.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, f, err := h.lookup(ctx, OpGet, id)
	if err != nil {
		return nil, fmt.Errorf("get domain %s: %w", id, err)
	}
	if f.Err != nil {
		return nil, fmt.Errorf("get domain %s: %w", id, f.Err)
	}
	out := d.describe()
	return &out, nil
}

// Define defines the domain of spec (named chime-<name>, UUID the VM id,
// chime metadata), or redefines it: a running domain keeps running with
// its old definition until it restarts, and reports the new metadata at
// once. It refuses with ErrForeign a domain of that UUID without chime
// metadata, and, as libvirt does, a UUID defined under another name or a
// name defined under another UUID.
func (h *Hypervisor) Define(ctx context.Context, spec hypervisor.DomainSpec) error {
	// The driver renders the XML first: the same validation, the same errors.
	if _, err := hypervisor.DomainXML(spec, hypervisor.DomainTypeKVM); err != nil {
		return fmt.Errorf("define vm %s: %w", spec.VMID, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	f, err := h.enter(ctx, Call{Op: OpDefine, UUID: spec.VMID}, "lookup domain")
	if err != nil {
		return fmt.Errorf("define vm %s: %w", spec.VMID, err)
	}
	id := spec.VMID // DomainXML accepts only canonical lowercase UUIDs
	name := hypervisor.DomainName(spec.Name)
	d := h.domains[id]
	switch {
	case d != nil && d.meta == nil:
		return fmt.Errorf("define vm %s: domain %q has the same uuid: %w", id, d.name, hypervisor.ErrForeign)
	case d != nil && d.name != name:
		return fmt.Errorf("define vm %s: define domain: operation failed: domain '%s' is already defined with uuid %s", id, d.name, id)
	}
	if other := h.byName(name); other != nil && other.uuid != id {
		return fmt.Errorf("define vm %s: define domain: operation failed: domain '%s' already exists with uuid %s", id, name, other.uuid)
	}
	detail := "updated"
	if d == nil {
		d = &domain{uuid: id, name: name, state: hypervisor.StateStopped, reason: "unknown"}
		h.domains[id] = d
		detail = "added"
	}
	d.spec = cloneSpec(spec)
	d.meta = &hypervisor.Meta{VMID: spec.VMID, Generation: spec.Generation}
	h.emitLifecycle(id, "defined", detail)
	if f.Err != nil {
		return fmt.Errorf("define vm %s: %w", id, f.Err)
	}
	return nil
}

// Start starts a defined domain; one already running is left alone.
func (h *Hypervisor) Start(ctx context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, f, err := h.lookup(ctx, OpStart, id)
	if err != nil {
		return fmt.Errorf("start domain %s: %w", id, err)
	}
	h.touch(OpStart, d)
	if !d.active {
		d.active, d.state, d.reason = true, hypervisor.StateRunning, "booted"
		d.liveSpec, d.since = cloneSpec(d.spec), h.clock()
		h.emitLifecycle(d.uuid, "started", "booted")
	}
	if f.Err != nil {
		return fmt.Errorf("start domain %s: %w", id, f.Err)
	}
	return nil
}

// Shutdown asks the guest to power off. A guest that honours ACPI does so
// at once (stopped, reason "shutdown"); one that ignores it, or a grace of
// zero, is destroyed as the driver does when the grace runs out (stopped,
// reason "destroyed"). A domain that is not running is left alone.
func (h *Hypervisor) Shutdown(ctx context.Context, id string, grace time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, f, err := h.lookup(ctx, OpShutdown, id)
	if err != nil {
		return fmt.Errorf("shut down domain %s: %w", id, err)
	}
	h.touch(OpShutdown, d)
	if d.active {
		if grace <= 0 || h.ignoresACPI[d.uuid] {
			h.stop(d, hypervisor.StateStopped, "destroyed", "destroyed")
		} else {
			h.emitLifecycle(d.uuid, "shutdown", "guest")
			h.stop(d, hypervisor.StateStopped, "shutdown", "shutdown")
		}
	}
	if f.Err != nil {
		return fmt.Errorf("shut down domain %s: %w", id, f.Err)
	}
	return nil
}

// Destroy kills a domain's qemu at once (stopped, reason "destroyed"); a
// domain that is not running is left alone.
func (h *Hypervisor) Destroy(ctx context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, f, err := h.lookup(ctx, OpDestroy, id)
	if err != nil {
		return fmt.Errorf("destroy domain %s: %w", id, err)
	}
	h.touch(OpDestroy, d)
	if d.active {
		h.stop(d, hypervisor.StateStopped, "destroyed", "destroyed")
	}
	if f.Err != nil {
		return fmt.Errorf("destroy domain %s: %w", id, f.Err)
	}
	return nil
}

// Undefine destroys a running domain and removes its definition. A missing
// domain is not an error.
func (h *Hypervisor) Undefine(ctx context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, f, err := h.lookup(ctx, OpUndefine, id)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("undefine domain %s: %w", id, err)
	}
	h.touch(OpUndefine, d)
	if d.active {
		h.stop(d, hypervisor.StateStopped, "destroyed", "destroyed")
	}
	delete(h.domains, d.uuid)
	h.emitLifecycle(d.uuid, "undefined", "removed")
	if f.Err != nil {
		return fmt.Errorf("undefine domain %s: %w", id, f.Err)
	}
	return nil
}

// Migrate live-migrates a running domain to the host at destURI, its
// memory streamed to migrateURI (both must name the same host). The
// hand-over is atomic: at no instant does the domain run on both hosts. On
// success the domain runs on the destination with reason "migrated", the
// same metadata and a persistent definition (MigratePersistDest), and is
// gone from here (MigrateUndefineSource). The outcome, once the
// preconditions hold, is the MigrationDecider's.
func (h *Hypervisor) Migrate(ctx context.Context, id, destURI, migrateURI string) error {
	if destURI == "" || migrateURI == "" {
		return fmt.Errorf("migrate domain %s: destination uri and migration uri are both required", id)
	}
	// Resolve the destination before taking any lock: the world may look
	// at other hypervisors.
	var dst, stream *Hypervisor
	linkUp := false
	if h.world != nil {
		dst = h.world.HypervisorAt(uriHost(destURI))
		stream = h.world.HypervisorAt(uriHost(migrateURI))
		linkUp = dst != nil && dst != h && h.world.MigrationLinkUp(h.name, dst.name, uriHost(destURI), uriHost(migrateURI))
	}
	unlock := lockAll(h, dst)
	defer unlock()

	d, f, err := h.lookup(ctx, OpMigrate, id)
	if err != nil {
		return fmt.Errorf("migrate domain %s: %w", id, err)
	}
	h.touch(OpMigrate, d)
	if err := h.migrationRefused(d, dst, stream, linkUp, destURI, migrateURI); err != nil {
		return fmt.Errorf("migrate domain %s to %s: %w", id, destURI, err)
	}
	outcome := MigrationSucceeds
	if h.decide != nil {
		m := Migration{UUID: d.uuid, From: h.name, To: dst.name}
		if d.meta != nil {
			m.Generation = d.meta.Generation
		}
		outcome = h.decide(m)
	}
	var result error
	switch outcome {
	case MigrationSucceeds:
		h.handOver(d, dst, false)
	case MigrationReplyLost:
		h.handOver(d, dst, true)
		result = fmt.Errorf("migrate domain %s to %s: %w: simulated: connection lost after the hand-over", id, destURI, hypervisor.ErrDisconnected)
	case MigrationFailsDuring:
		result = fmt.Errorf("migrate domain %s to %s: aborted: simulated failure during the transfer", id, destURI)
	default:
		result = fmt.Errorf("migrate domain %s to %s: simulated failure before the hand-over (%s)", id, destURI, outcome)
	}
	if f.Err != nil {
		return fmt.Errorf("migrate domain %s to %s: %w", id, destURI, f.Err)
	}
	return result
}

// migrationRefused checks what libvirt checks before a migration starts.
// The caller holds both locks.
func (h *Hypervisor) migrationRefused(d *domain, dst, stream *Hypervisor, linkUp bool, destURI, migrateURI string) error {
	switch {
	case !d.active:
		return errors.New("requested operation is not valid: domain is not running")
	case dst == nil:
		return fmt.Errorf("unable to connect to server at %q: no such host", uriHost(destURI))
	case dst == h:
		return errors.New("internal error: attempt to migrate guest to the same host")
	case !linkUp:
		return fmt.Errorf("unable to connect to server at %q: connection timed out", uriHost(destURI))
	case !dst.libvirtd:
		return fmt.Errorf("unable to connect to server at %q: connection refused", uriHost(destURI))
	case stream != dst:
		return fmt.Errorf("migration stream to %q: connection refused", uriHost(migrateURI))
	}
	if there := dst.domains[d.uuid]; there != nil {
		if there.name != d.name {
			return fmt.Errorf("operation failed: domain '%s' is already defined with uuid %s", there.name, d.uuid)
		}
		if there.active {
			return fmt.Errorf("operation invalid: domain '%s' is already active", there.name)
		}
	} else if other := dst.byName(d.name); other != nil {
		return fmt.Errorf("operation failed: domain '%s' already exists with uuid %s", d.name, other.uuid)
	}
	return nil
}

// handOver moves d from h to dst in one step. With replyLost the source's
// lifecycle events are lost to a connection drop. The caller holds both locks.
func (h *Hypervisor) handOver(d *domain, dst *Hypervisor, replyLost bool) {
	now := h.clock()
	delete(h.domains, d.uuid)
	if replyLost {
		h.emitConnection(hypervisor.EventDisconnected)
		h.emitConnection(hypervisor.EventReconnected)
	} else {
		h.emitLifecycle(d.uuid, "suspended", "migrated")
		h.emitLifecycle(d.uuid, "stopped", "migrated")
		h.emitLifecycle(d.uuid, "undefined", "removed")
	}

	detail := "added"
	if there := dst.domains[d.uuid]; there != nil {
		detail = "updated"
		if there.meta == nil {
			dst.touches = append(dst.touches, Call{Host: dst.name, Op: OpMigrate, UUID: d.uuid})
		}
	}
	// The destination's persistent definition is the live one.
	dst.domains[d.uuid] = &domain{
		uuid: d.uuid, name: d.name, meta: cloneMeta(d.meta),
		spec: cloneSpec(d.liveSpec), liveSpec: cloneSpec(d.liveSpec),
		active: true, state: hypervisor.StateRunning, reason: "migrated", since: now,
	}
	if h.ignoresACPI[d.uuid] {
		dst.ignoresACPI[d.uuid] = true
	} else {
		delete(dst.ignoresACPI, d.uuid)
	}
	dst.emitLifecycle(d.uuid, "started", "migrated")
	dst.emitLifecycle(d.uuid, "resumed", "migrated")
	dst.emitLifecycle(d.uuid, "defined", detail)
}

// ---- Faults the simulator injects (the world, not the API) ----

// SetIgnoresACPI says whether the guest of domain id ignores the ACPI power
// button. It is a property of the guest: it may be set before the domain
// exists, and it travels with a live migration.
func (h *Hypervisor) SetIgnoresACPI(id string, ignores bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ignores {
		h.ignoresACPI[canonical(id)] = true
	} else {
		delete(h.ignoresACPI, canonical(id))
	}
}

// AddForeign defines a domain that is not chime's (no chime metadata), as
// another tool on the host would, and starts it when running is set.
func (h *Hypervisor) AddForeign(id, name string, running bool) error {
	u, err := uuid.Parse(id)
	if err != nil {
		return fmt.Errorf("foreign domain uuid %q: %w", id, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	cid := u.String()
	if h.domains[cid] != nil || h.byName(name) != nil {
		return fmt.Errorf("foreign domain %s (%s): uuid or name already defined", cid, name)
	}
	d := &domain{uuid: cid, name: name, state: hypervisor.StateStopped, reason: "unknown"}
	h.domains[cid] = d
	h.emitLifecycle(cid, "defined", "added")
	if running {
		d.active, d.state, d.reason, d.since = true, hypervisor.StateRunning, "booted", h.clock()
		h.emitLifecycle(cid, "started", "booted")
	}
	return nil
}

// Crash kills the qemu process of domain id, as a qemu crash or kill -9
// does: libvirt reports it shut off with reason "crashed" and emits
// "stopped" with detail "failed". It reports whether a qemu was running.
// It works while libvirtd is down (qemu processes are not libvirtd's); the
// event is then lost, and the state seen after libvirtd restarts.
func (h *Hypervisor) Crash(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.domains[canonical(id)]
	if d == nil || !d.active {
		return false
	}
	h.stop(d, hypervisor.StateCrashed, "crashed", "failed")
	return true
}

// Panic makes the guest of domain id panic. chime's domains destroy a
// crashed guest (on_crash=destroy): libvirt emits "crashed"/"panicked",
// then "stopped"/"crashed", and reports the domain shut off, crashed.
func (h *Hypervisor) Panic(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.domains[canonical(id)]
	if d == nil || !d.active {
		return false
	}
	h.emitLifecycle(d.uuid, "crashed", "panicked")
	h.stop(d, hypervisor.StateCrashed, "crashed", "crashed")
	return true
}

// GuestPowerOff makes the guest of domain id power itself off.
func (h *Hypervisor) GuestPowerOff(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.domains[canonical(id)]
	if d == nil || !d.active {
		return false
	}
	h.emitLifecycle(d.uuid, "shutdown", "guest")
	h.stop(d, hypervisor.StateStopped, "shutdown", "shutdown")
	return true
}

// StopLibvirtd stops libvirtd: every call fails with ErrDisconnected and
// Connected is false, the session sees EventDisconnected, and the qemu
// processes keep running.
func (h *Hypervisor) StopLibvirtd() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.libvirtd {
		return
	}
	h.libvirtd = false
	h.emitConnection(hypervisor.EventDisconnected)
}

// StartLibvirtd starts libvirtd again; the session sees EventReconnected
// (events in between were lost: the agent does a full reconcile). It does
// nothing while the host has no power.
func (h *Hypervisor) StartLibvirtd() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.powered || h.libvirtd {
		return
	}
	h.libvirtd = true
	h.emitConnection(hypervisor.EventReconnected)
}

// PowerOff cuts the host's power: every qemu dies, libvirtd and the
// agent's session with it (Events is closed, without a last event).
// Definitions survive on disk when keepDefinitions is set, and come back
// shut off with reason "unknown" (libvirt's runtime state lived in /run);
// otherwise they are lost.
func (h *Hypervisor) PowerOff(keepDefinitions bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.powered {
		return
	}
	h.powered, h.libvirtd = false, false
	h.closeSession()
	if !keepDefinitions {
		clear(h.domains)
		return
	}
	for _, d := range h.domains {
		d.active, d.state, d.reason = false, hypervisor.StateStopped, "unknown"
		d.liveSpec, d.since = hypervisor.DomainSpec{}, time.Time{}
	}
}

// PowerOn restores power: libvirtd starts with what definitions survived,
// none of them running (chime never sets autostart). The agent's session
// stays closed until Open, as a restarted agent opens a new driver.
func (h *Hypervisor) PowerOn() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.powered, h.libvirtd = true, true
}

// Open starts a new driver session (an agent that starts or restarts): a
// fresh Events channel, the drop count at zero. The previous session, if
// any, is closed. Like hypervisor.Open it fails while libvirtd is down.
func (h *Hypervisor) Open() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.libvirtd {
		return fmt.Errorf("connect to libvirt on %s: %w", h.name, hypervisor.ErrDisconnected)
	}
	h.closeSession()
	h.events = make(chan hypervisor.Event, h.bufLen)
	h.dropped = 0
	h.open = true
	return nil
}

// Close ends the session as the driver's Close does: Events is closed and
// calls fail with ErrDisconnected. The host itself is unaffected.
func (h *Hypervisor) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closeSession()
	return nil
}

// ---- Read-only views for the invariant checker (never faulted) ----

// RunningQemu is one qemu process on a host.
type RunningQemu struct {
	UUID       string    // the domain's UUID: the VM id for chime domains
	Name       string    // the domain's name
	Generation uint64    // from the live chime metadata; 0 when foreign
	Foreign    bool      // the domain has no chime metadata
	Since      time.Time // when this process started here (booted or migrated in)
}

// Running returns the qemu processes on this host now, sorted by UUID.
func (h *Hypervisor) Running() []RunningQemu {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running()
}

// SnapshotRunning returns the qemu processes of every given host, read at
// one instant (all hosts locked together, as a migration locks its two),
// by hypervisor name.
func SnapshotRunning(hosts ...*Hypervisor) map[string][]RunningQemu {
	unlock := lockAll(hosts...)
	defer unlock()
	out := make(map[string][]RunningQemu, len(hosts))
	for _, h := range hosts {
		if h != nil {
			out[h.name] = h.running()
		}
	}
	return out
}

// DomainRecord is one domain as the world holds it.
type DomainRecord struct {
	hypervisor.Domain                       // as List reports it
	Spec              hypervisor.DomainSpec // persistent definition; zero for a foreign domain
	LiveSpec          hypervisor.DomainSpec // what the running qemu started with; zero when not running
	Since             time.Time             // when the running qemu started; zero when not running
}

// Domains returns every domain, sorted by UUID, whatever libvirtd's state.
func (h *Hypervisor) Domains() []DomainRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]DomainRecord, 0, len(h.domains))
	for _, d := range h.sorted() {
		r := DomainRecord{Domain: d.describe(), Spec: cloneSpec(d.spec)}
		if d.active {
			r.LiveSpec, r.Since = cloneSpec(d.liveSpec), d.since
		}
		out = append(out, r)
	}
	return out
}

// ForeignTouches returns, in order, the mutating calls that named a domain
// without chime metadata (chime must never touch one), and migrations that
// replaced such a domain's definition on their destination.
func (h *Hypervisor) ForeignTouches() []Call {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.touches)
}

// Powered reports whether the host has power; LibvirtdUp whether libvirtd runs.
func (h *Hypervisor) Powered() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.powered
}

// LibvirtdUp reports whether libvirtd runs.
func (h *Hypervisor) LibvirtdUp() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.libvirtd
}

// ---- Internals (the caller holds h.mu) ----

func (h *Hypervisor) connected() bool { return h.open && h.libvirtd }

// enter starts a call: the connection must be up, ctx alive, and the fault
// hook must let it through. It returns the fault to apply after the effect.
func (h *Hypervisor) enter(ctx context.Context, c Call, what string) (Fault, error) {
	if !h.connected() {
		return Fault{}, fmt.Errorf("%s: %w", what, hypervisor.ErrDisconnected)
	}
	if err := ctx.Err(); err != nil {
		return Fault{}, fmt.Errorf("%s: %w", what, err)
	}
	if h.fault == nil {
		return Fault{}, nil
	}
	c.Host = h.name
	f := h.fault(c)
	if f.Err != nil && !f.Applied {
		return Fault{}, fmt.Errorf("%s: %w", what, f.Err)
	}
	return f, nil
}

// lookup parses id as the driver does, enters the call and finds the
// domain; ErrNotFound when there is none.
func (h *Hypervisor) lookup(ctx context.Context, op Op, id string) (*domain, Fault, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return nil, Fault{}, fmt.Errorf("domain uuid %q: %w", id, err)
	}
	f, err := h.enter(ctx, Call{Op: op, UUID: id}, "lookup domain")
	if err != nil {
		return nil, Fault{}, err
	}
	d := h.domains[u.String()]
	if d == nil {
		return nil, Fault{}, fmt.Errorf("%w: no domain with matching uuid '%s'", hypervisor.ErrNotFound, u)
	}
	return d, f, nil
}

// touch records a mutating call on a foreign domain.
func (h *Hypervisor) touch(op Op, d *domain) {
	if d.meta == nil {
		h.touches = append(h.touches, Call{Host: h.name, Op: op, UUID: d.uuid})
	}
}

// stop ends d's qemu with the given state and reason, and emits "stopped"
// with the given event detail.
func (h *Hypervisor) stop(d *domain, state, reason, eventReason string) {
	d.active, d.state, d.reason = false, state, reason
	d.liveSpec, d.since = hypervisor.DomainSpec{}, time.Time{}
	h.emitLifecycle(d.uuid, "stopped", eventReason)
}

// emitLifecycle queues a libvirt lifecycle event; it reaches the session
// only while libvirtd is up and the session open.
func (h *Hypervisor) emitLifecycle(id, detail, reason string) {
	if h.connected() {
		h.emit(hypervisor.Event{Kind: hypervisor.EventLifecycle, UUID: id, Detail: detail, Reason: reason, At: h.clock()})
	}
}

// emitConnection queues an event of the driver's own (connection lost or back).
func (h *Hypervisor) emitConnection(kind hypervisor.EventKind) {
	if h.open {
		h.emit(hypervisor.Event{Kind: kind, At: h.clock()})
	}
}

// emit never blocks: when the buffer is full the oldest event is dropped
// and counted, as the driver does.
func (h *Hypervisor) emit(ev hypervisor.Event) {
	for {
		select {
		case h.events <- ev:
			return
		default:
		}
		select {
		case <-h.events:
			h.dropped++
		default:
		}
	}
}

func (h *Hypervisor) closeSession() {
	if h.open {
		close(h.events)
		h.open = false
	}
}

func (h *Hypervisor) sorted() []*domain {
	out := make([]*domain, 0, len(h.domains))
	for _, d := range h.domains {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *domain) int { return strings.Compare(a.uuid, b.uuid) })
	return out
}

func (h *Hypervisor) byName(name string) *domain {
	for _, d := range h.domains {
		if d.name == name { // names are unique: map order cannot show
			return d
		}
	}
	return nil
}

func (h *Hypervisor) running() []RunningQemu {
	var out []RunningQemu
	for _, d := range h.sorted() {
		if !d.active {
			continue
		}
		q := RunningQemu{UUID: d.uuid, Name: d.name, Foreign: d.meta == nil, Since: d.since}
		if d.meta != nil {
			q.Generation = d.meta.Generation
		}
		out = append(out, q)
	}
	return out
}

func (d *domain) describe() hypervisor.Domain {
	return hypervisor.Domain{UUID: d.uuid, Name: d.name, State: d.state, Reason: d.reason, Meta: cloneMeta(d.meta)}
}

// lockAll locks the given hypervisors (nil and repeats skipped) in one
// global order, so that two migrations in opposite directions cannot
// deadlock, and returns the unlock.
func lockAll(hosts ...*Hypervisor) func() {
	var hs []*Hypervisor
	for _, h := range hosts {
		if h != nil && !slices.Contains(hs, h) {
			hs = append(hs, h)
		}
	}
	slices.SortFunc(hs, func(a, b *Hypervisor) int {
		switch {
		case a.order < b.order:
			return -1
		case a.order > b.order:
			return 1
		}
		return 0
	})
	for _, h := range hs {
		h.mu.Lock()
	}
	return func() {
		for i := len(hs) - 1; i >= 0; i-- {
			hs[i].mu.Unlock()
		}
	}
}

// uriHost is the host part of a libvirt or migration URI
// (qemu+tcp://10.0.0.2/system, tcp://10.0.0.2:49152, tcp://[fd00::2]).
func uriHost(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// canonical is id as libvirt keys it (lowercase, hyphenated); an
// unparsable id is kept as given and matches nothing.
func canonical(id string) string {
	if u, err := uuid.Parse(id); err == nil {
		return u.String()
	}
	return id
}

func cloneSpec(s hypervisor.DomainSpec) hypervisor.DomainSpec {
	s.Disks = slices.Clone(s.Disks)
	return s
}

func cloneMeta(m *hypervisor.Meta) *hypervisor.Meta {
	if m == nil {
		return nil
	}
	c := *m
	return &c
}
