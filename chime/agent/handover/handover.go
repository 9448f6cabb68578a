// Package handover carries out the agent's HA operations that move VMs off
// or onto this node: the live migrations the servers order, node-local
// migrations and drains (`chime agent migrate|drain`), and the adoption of
// domains arriving by node-local migration. It keeps the fencing records
// that stop a generation handed away from ever starting here again, and
// tells the reconciler which VMs to leave alone (Hold).
package handover

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
	"github.com/hashicorp/go-hclog"
)

// Hypervisor is the part of the libvirt driver the operations call;
// *hypervisor.Driver implements it.
type Hypervisor interface {
	List(ctx context.Context) ([]hypervisor.Domain, error)
	Shutdown(ctx context.Context, uuid string, grace time.Duration) error
	Migrate(ctx context.Context, uuid, destURI, migrateURI string) error
}

// Store holds the operations' records across restarts; *store.Store
// implements it. Every write either happened or returns an error.
type Store interface {
	BeginHandover(h store.Handover) error
	Retire(h store.Handover) error
	AbortHandover(vmID string, gen uint64) error
	Handovers() (map[string]store.Handover, error)
	Retired() (map[string]uint64, error)
	AddAdoption(ad store.Adoption) error
	Adoptions() (map[string]store.Adoption, error)
	RemoveAdoption(vmID string) error
	ExpireAdoption(vmID string) error
	AddMigration(m structs.LocalMigration) error
	// PendingMigrations are the migration log's entries the servers have
	// not acknowledged, in order, and the last one's sequence.
	PendingMigrations() ([]structs.LocalMigration, uint64, error)
	StartDrain(newID string) (string, error)
	DrainID() (string, error)
	ReleaseDrain(id string) (bool, error)
}

// Reporter tells the servers the outcome of a migration they ordered;
// *api.Client implements it.
type Reporter interface {
	ReportMigration(ctx context.Context, r api.MigrationReport) error
}

// Announcer tells the agent at dest (an IP address) that a domain is about
// to arrive by node-local migration, so that it keeps it.
type Announcer interface {
	// It returns the node id the destination's agent answered with ("" from
	// an agent that predates it).
	AnnounceAdoption(ctx context.Context, dest string, ad store.Adoption) (string, error)
}

// AdoptionBound is how long an announced adoption whose domain has not
// arrived holds its VM at most: then it expires (an event and an alarm on
// the servers), unless the servers said earlier that the migration is
// over. A node-local live migration that takes longer than this is
// refused its adoption.
const AdoptionBound = 15 * time.Minute

// Clock is the operations' time: Now for the local drain's deadline and the
// migrations' "took" figures, NewTimer for the drain's wait, AfterFunc for
// all background work (ordered migrations, report and record retries). On
// a clock.Manual that work runs when the clock is advanced, on the
// advancing goroutine, so nothing runs behind the caller's back.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) clock.Timer
	AfterFunc(d time.Duration, f func()) clock.Timer
}

// Config wires a Manager.
type Config struct {
	NodeID        string
	Hypervisor    Hypervisor
	Store         Store
	Reporter      Reporter
	Announcer     Announcer
	ShutdownGrace time.Duration // for the guest shutdowns of a local drain
	Drained       bool          // the local drain flag as persisted
	// Trigger asks the reconciler for a pass (a hold or the drain flag
	// changed). Changed asks for an early heartbeat. Both must not block.
	Trigger func()
	Changed func()
	// Prove returns this node's structs.AdoptionProof for a VM generation
	// it hands over by node-local migration ("" when it has no secret
	// yet); nil: none.
	Prove func(vmID string, gen uint64) string
	// RetryInterval is the first wait before a failed record write is
	// tried again; it doubles up to 30 s. Default 1 s.
	RetryInterval time.Duration
	Clock         Clock     // nil: the wall clock
	Rand          io.Reader // source of local drain ids; nil: crypto/rand
	// Interfaces looks up the interface a node-local migration names;
	// nil: HostInterface.
	Interfaces func(name string) (Interface, error)
	Logger     hclog.Logger
}

// Manager runs the operations and keeps their in-memory state. Its methods
// are safe for concurrent use; Close stops what runs in the background.
type Manager struct {
	cfg Config
	log hclog.Logger

	ctx    context.Context // lifetime of background work (migrations, record retries)
	cancel context.CancelFunc
	wg     sync.WaitGroup // background work scheduled and not finished or stopped

	mu       sync.Mutex
	drained  bool                      // local drain flag (mirrors the store)
	synced   bool                      // a desired state was received: the reconciler runs
	inflight map[string]string         // vm id → what is handing it over now: a task id, "local", or "settle"
	reported map[string]bool           // task id + vm id → migration done and reported
	unsaved  map[string]store.Handover // vm id → generation that left whose fencing record is not on disk yet
	rejected map[string]bool           // vm id → adoption refused by the servers whose record is not removed yet
	closed   bool                      // Close was called: nothing more is scheduled
	nextWork uint64                    // id of the next scheduled piece of background work
	work     map[uint64]*scheduled     // background work waiting for its time
}

// scheduled is one piece of background work set on the clock.
type scheduled struct {
	timer     clock.Timer
	cancelled func() // called instead of the work when the manager closes first; may be nil
}

// New returns a Manager; Close it when the agent stops.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Trigger == nil {
		cfg.Trigger = func() {}
	}
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Wall{}
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Interfaces == nil {
		cfg.Interfaces = HostInterface
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, drained: cfg.Drained,
		inflight: map[string]string{}, reported: map[string]bool{},
		unsaved: map[string]store.Handover{}, rejected: map[string]bool{},
		work: map[uint64]*scheduled{}}
}

// Close cancels the migrations and retries in flight and waits for them;
// work still waiting for its time does not run.
func (m *Manager) Close() {
	m.cancel()
	m.mu.Lock()
	m.closed = true
	ids := slices.Sorted(maps.Keys(m.work))
	work := m.work
	m.work = map[uint64]*scheduled{}
	m.mu.Unlock()
	for _, id := range ids {
		if w := work[id]; w.timer.Stop() {
			if w.cancelled != nil {
				w.cancelled()
			}
			m.wg.Done()
		}
		// Not stopped: it is firing now, finds itself gone from m.work
		// and calls cancelled itself.
	}
	m.wg.Wait()
}

// after runs f in the background once d has passed on the clock, unless
// the manager is closed first; then cancelled runs instead (when set).
func (m *Manager) after(d time.Duration, f, cancelled func()) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		if cancelled != nil {
			cancelled()
		}
		return
	}
	defer m.mu.Unlock()
	id := m.nextWork
	m.nextWork++
	w := &scheduled{cancelled: cancelled}
	m.work[id] = w
	m.wg.Add(1)
	// The callback takes m.mu first, so it sees w.timer set.
	w.timer = m.cfg.Clock.AfterFunc(d, func() {
		defer m.wg.Done()
		m.mu.Lock()
		_, mine := m.work[id]
		delete(m.work, id)
		m.mu.Unlock()
		if !mine {
			if w.cancelled != nil {
				w.cancelled()
			}
			return
		}
		f()
	})
}

// Drained reports the local drain flag.
func (m *Manager) Drained() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.drained
}

// Hold returns the VM ids the reconciler must leave alone because of an HA
// operation: incoming live migrations, hand-overs in flight from here,
// generations handed away (retired, or begun and not settled), and
// announced node-local adoptions the servers have not decided on. When a
// record cannot be read it returns the error, and the caller must change
// nothing: an unreadable fencing record is not an absent one.
func (m *Manager) Hold(ds api.DesiredState) ([]string, error) {
	retired, err := m.cfg.Store.Retired()
	if err != nil {
		return nil, err
	}
	handovers, err := m.cfg.Store.Handovers()
	if err != nil {
		return nil, err
	}
	adoptions, err := m.cfg.Store.Adoptions()
	if err != nil {
		return nil, err
	}
	var hold []string
	for _, in := range ds.Incoming {
		hold = append(hold, in.ID)
	}
	desired := make(map[string]api.DesiredVM, len(ds.VMs))
	for _, vm := range ds.VMs {
		desired[vm.ID] = vm
		if vm.Held {
			hold = append(hold, vm.ID) // migration outcome unknown: the servers settle it
		}
	}
	// fence holds a VM still placed here at a generation that left.
	fence := func(id string, gen uint64) {
		if vm, ok := desired[id]; ok && vm.Generation <= gen {
			hold = append(hold, id)
		}
	}
	// A VM that left by a node-local migration the servers have not
	// acknowledged yet is held whatever its placement here says: that
	// placement was decided without this node's log (it may adopt the very
	// copy that left again: random seed 4147, scenario
	// local-migration-there-and-back-unsynced). The next heartbeat carries
	// the log; its acknowledgement ends the hold.
	migs, _, err := m.cfg.Store.PendingMigrations()
	if err != nil {
		return nil, err
	}
	for _, mg := range migs {
		if _, ok := desired[mg.VMID]; ok && mg.Outcome != structs.LocalMigrationFailed {
			hold = append(hold, mg.VMID)
		}
	}
	for id, gen := range retired {
		fence(id, gen)
	}
	for id, h := range handovers {
		fence(id, h.Generation)
	}
	m.mu.Lock()
	for id := range m.inflight {
		hold = append(hold, id)
	}
	for id, h := range m.unsaved {
		fence(id, h.Generation)
	}
	for id, ad := range adoptions {
		if m.rejected[id] || ad.Expired {
			continue // refused or expired: the reconciler destroys a copy as stale
		}
		if vm, ok := desired[id]; ok && (vm.AdoptGeneration != 0 || vm.Generation >= ad.Generation) {
			// The servers placed it here: Plan adopts it, or (placed here
			// anew, or it never left here) the announcement is over and
			// the VM is managed here like any other (root cause 5).
			continue
		}
		hold = append(hold, id)
	}
	m.mu.Unlock()
	// Built from maps: sorted, so that the same records give the same list.
	slices.Sort(hold)
	return slices.Compact(hold), nil
}

// AfterDesired runs the HA side effects of a new desired state: settle
// hand-overs an earlier process left open, forget decided adoptions, start
// ordered migrations, release a local drain. Call it before the reconciler
// passes over ds.
func (m *Manager) AfterDesired(ctx context.Context, ds api.DesiredState) {
	m.mu.Lock()
	m.synced = true
	m.mu.Unlock()
	m.settleHandovers(ctx)
	m.forgetOverridden(ds)
	for _, vm := range ds.VMs {
		if vm.AdoptGeneration != 0 {
			m.adoptionAccepted(vm)
		}
		if vm.Migrate != nil {
			m.startMigration(vm)
		}
	}
	if ds.ReleasedDrainID != "" {
		m.releaseDrain(ds.ReleasedDrainID)
	}
}

// Migrating returns the VMs a live migration from here may be moving
// right now: a hand-over in flight in this process, or one recorded and
// not settled. A heartbeat marks their observations (structs.VMObservation
// Migrating): "running here" then proves nothing. Call it before and
// after listing libvirt and take both.
func (m *Manager) Migrating() (map[string]bool, error) {
	out := map[string]bool{}
	m.mu.Lock()
	for id := range m.inflight {
		out[strings.ToLower(id)] = true
	}
	m.mu.Unlock()
	open, err := m.cfg.Store.Handovers()
	if err != nil {
		return nil, err
	}
	for id := range open {
		out[strings.ToLower(id)] = true
	}
	return out, nil
}

var errBusy = errors.New("a migration of this VM is already in flight")

// claim marks vmID as being handed over by who; it fails when something
// else already is. The in-flight mark serializes the changes of a VM's
// hand-over record, and holds the VM.
func (m *Manager) claim(vmID, who string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, busy := m.inflight[vmID]; busy {
		return false
	}
	m.inflight[vmID] = who
	return true
}

func (m *Manager) release(vmID string) {
	m.mu.Lock()
	delete(m.inflight, vmID)
	m.mu.Unlock()
	m.cfg.Trigger()
}

// settleHandovers decides the hand-overs begun by an earlier process (it
// died between asking libvirt to migrate and recording the outcome): a
// domain still running here did not leave (libvirt cancels a migration
// whose client went away); one gone or shut off here may have left, so
// its generation is retired here (never started here again) and where it
// runs is for the destination to prove. Until settled, such a VM is held.
func (m *Manager) settleHandovers(ctx context.Context) {
	open, err := m.cfg.Store.Handovers()
	if err != nil {
		m.log.Error("cannot read the hand-over records; the reconciler changes nothing until they can be read", "error", err)
		return
	}
	if len(open) == 0 {
		return
	}
	var mine []store.Handover
	for _, id := range slices.Sorted(maps.Keys(open)) {
		h := open[id]
		m.mu.Lock()
		_, pending := m.unsaved[h.VMID]
		m.mu.Unlock()
		if !pending && m.claim(h.VMID, "settle") {
			mine = append(mine, h)
		}
	}
	if len(mine) == 0 {
		return
	}
	defer func() {
		for _, h := range mine {
			m.release(h.VMID)
		}
	}()
	domains, err := m.cfg.Hypervisor.List(ctx)
	if err != nil {
		m.log.Warn("cannot list libvirt domains to settle open hand-overs; their VMs stay held", "error", err)
		return
	}
	for _, h := range mine {
		if stillRunsHere(domainIn(domains, h.VMID)) {
			if err := m.cfg.Store.AbortHandover(h.VMID, h.Generation); err != nil {
				m.log.Error("cannot clear a hand-over record; the VM stays held", "vm", h.VMID, "error", err)
				continue
			}
			m.log.Info("an earlier migration did not move the VM: it is managed here again", "vm", h.VMID, "generation", h.Generation)
			continue
		}
		// Not running here: whether it left is for the destination to
		// prove (the servers hold the VM until then); here it is retired.
		m.log.Warn("an earlier migration may have moved the VM away: its generation is retired here", "vm", h.VMID, "generation", h.Generation)
		h.Outcome = structs.LocalMigrationUnknown // gone, but libvirt never said where
		m.retire(h)                               // on failure it is held in memory and retried
	}
}

// retire records that h's generation left this node. When the record
// cannot be written, the generation is held in memory (never started here)
// and the write is retried in the background until it succeeds or the
// agent stops; the error is returned for the operation's result.
func (m *Manager) retire(h store.Handover) error {
	err := m.cfg.Store.Retire(h)
	if err == nil {
		return nil
	}
	m.log.Error("cannot record that a VM left this node: holding it in memory and retrying; it is never started here",
		"vm", h.VMID, "generation", h.Generation, "error", err)
	m.mu.Lock()
	if cur, ok := m.unsaved[h.VMID]; !ok || cur.Generation < h.Generation {
		m.unsaved[h.VMID] = h
	}
	m.mu.Unlock()
	m.retry("record retired generation of "+h.VMID, func() error { return m.cfg.Store.Retire(h) }, func() {
		m.mu.Lock()
		if cur, ok := m.unsaved[h.VMID]; ok && cur.Generation <= h.Generation {
			delete(m.unsaved, h.VMID)
		}
		m.mu.Unlock()
	})
	return err
}

// retry runs write in the background until it succeeds (then done) or the
// manager is closed: first after RetryInterval, then doubling up to 30 s.
func (m *Manager) retry(what string, write func() error, done func()) {
	m.retryAfter(m.cfg.RetryInterval, what, write, done)
}

func (m *Manager) retryAfter(wait time.Duration, what string, write func() error, done func()) {
	m.after(wait, func() {
		if m.ctx.Err() != nil {
			m.log.Error("agent stopping: record still not written", "what", what)
			return
		}
		if err := write(); err != nil {
			m.log.Error("record still cannot be written; retrying", "what", what, "error", err)
			m.retryAfter(min(2*wait, 30*time.Second), what, write, done)
			return
		}
		m.log.Info("record written after retries", "what", what)
		done()
	}, func() { m.log.Error("agent stopping: record still not written", "what", what) })
}

// adoptionAccepted forgets an announced adoption the servers placed here.
func (m *Manager) adoptionAccepted(vm api.DesiredVM) {
	ads, err := m.cfg.Store.Adoptions()
	if err != nil {
		m.log.Error("cannot read the adoptions", "vm", vm.ID, "error", err)
		return
	}
	if ads[vm.ID].VMID == "" {
		return
	}
	m.log.Info("node-local migration accepted by the servers", "vm", vm.Name, "generation", vm.Generation)
	if err := m.cfg.Store.RemoveAdoption(vm.ID); err != nil {
		// While it stays recorded and the servers name its AdoptGeneration
		// it holds nothing; forget it before they stop naming it.
		m.log.Error("cannot forget an accepted adoption; retrying", "vm", vm.ID, "error", err)
		m.retry("forget accepted adoption of "+vm.ID, func() error { return m.cfg.Store.RemoveAdoption(vm.ID) }, func() {})
	}
}

// forgetOverridden drops announced adoptions the servers overrode: the VM
// is placed here at the announced generation or a newer one, without
// adopting it (a rebuild placed it here: root cause 5; or it never left
// here). The announcement is over.
func (m *Manager) forgetOverridden(ds api.DesiredState) {
	ads, err := m.cfg.Store.Adoptions()
	if err != nil || len(ads) == 0 {
		return
	}
	for _, vm := range ds.VMs {
		if ad, ok := ads[vm.ID]; ok && vm.AdoptGeneration == 0 && vm.Generation >= ad.Generation {
			m.log.Info("announced node-local migration overridden by the servers: the VM is placed here anew", "vm", vm.Name,
				"announced_generation", ad.Generation, "generation", vm.Generation)
			if err := m.cfg.Store.RemoveAdoption(vm.ID); err != nil {
				m.log.Error("cannot forget an overridden adoption (it holds nothing)", "vm", vm.ID, "error", err)
			}
		}
	}
}

// ExpireAdoptions marks expired every announced adoption whose domain has
// not arrived (not in here, the VM ids of the chime domains listed) within
// AdoptionBound of its announcement, and returns the expired ones for the
// heartbeat (those already expired included), until the servers
// acknowledge them (DropAdoptions). An expired adoption holds nothing.
func (m *Manager) ExpireAdoptions(here map[string]bool) ([]structs.AdoptionRef, error) {
	ads, err := m.cfg.Store.Adoptions()
	if err != nil {
		return nil, err
	}
	now := m.cfg.Clock.Now()
	var out []structs.AdoptionRef
	for _, id := range slices.Sorted(maps.Keys(ads)) {
		ad := ads[id]
		if !ad.Expired && (here[id] || now.Sub(ad.At) < AdoptionBound) {
			continue
		}
		if !ad.Expired {
			m.log.Warn("announced node-local migration never arrived within the bound: no longer holding the VM",
				"vm", ad.Name, "generation", ad.Generation, "from", ad.FromNode, "bound", AdoptionBound)
			if err := m.cfg.Store.ExpireAdoption(id); err != nil {
				return nil, err
			}
			m.cfg.Trigger()
		}
		out = append(out, structs.AdoptionRef{VMID: ad.VMID, Generation: ad.Generation})
	}
	return out, nil
}

// DropAdoptions forgets announced adoptions the servers say are over (the
// VM is gone, placed elsewhere anew, its source reported the migration
// failed) or whose expiry they recorded.
func (m *Manager) DropAdoptions(ids []string) {
	for _, id := range ids {
		m.log.Info("announced node-local migration is over: forgetting it", "vm", id)
		if err := m.cfg.Store.RemoveAdoption(id); err != nil {
			m.log.Error("cannot forget an announced adoption; the next heartbeat asks again", "vm", id, "error", err)
		}
	}
	if len(ids) > 0 {
		m.cfg.Trigger()
	}
}

// RejectAdoptions forgets adoptions the servers refused: the reconciler
// then destroys those domains as stale. A record that cannot be removed is
// overridden in memory (no longer held) and removed later.
func (m *Manager) RejectAdoptions(ids []string) {
	for _, id := range ids {
		m.log.Warn("servers refused a node-local adoption: destroying the adopted copy", "vm", id)
		if err := m.cfg.Store.RemoveAdoption(id); err != nil {
			m.log.Error("cannot forget a refused adoption; no longer holding it, retrying the removal", "vm", id, "error", err)
			m.mu.Lock()
			m.rejected[id] = true
			m.mu.Unlock()
			m.retry("forget refused adoption of "+id, func() error { return m.cfg.Store.RemoveAdoption(id) }, func() {
				m.mu.Lock()
				delete(m.rejected, id)
				m.mu.Unlock()
			})
		}
	}
	if len(ids) > 0 {
		m.cfg.Trigger()
	}
}

// releaseDrain clears the local drain the servers released. When the
// release cannot be recorded the node stays drained (the safe side) and
// the next desired state tries again.
func (m *Manager) releaseDrain(id string) {
	released, err := m.cfg.Store.ReleaseDrain(id)
	if err != nil {
		m.log.Error("cannot record the release of the local drain; staying drained", "drain_id", id, "error", err)
		return
	}
	if !released {
		return
	}
	m.mu.Lock()
	m.drained = false
	m.mu.Unlock()
	m.log.Info("local drain released by the servers (node enabled)", "drain_id", id)
	m.cfg.Trigger()
}

func domainIn(domains []hypervisor.Domain, id string) *hypervisor.Domain {
	for i := range domains {
		if strings.EqualFold(domains[i].UUID, id) {
			return &domains[i]
		}
	}
	return nil
}

func (m *Manager) domainHere(ctx context.Context, id string) (*hypervisor.Domain, error) {
	ds, err := m.cfg.Hypervisor.List(ctx)
	if err != nil {
		return nil, err
	}
	return domainIn(ds, id), nil
}

// LibvirtURI is the libvirt URI of the hypervisor at host, as peers
// migrate to it.
func LibvirtURI(host string) string { return "qemu+tcp://" + hostForURI(host) + "/system" }

func hostForURI(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "[" + host + "]"
	}
	return host
}
