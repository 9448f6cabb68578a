package handover

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/agent/agenttest"
	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

const (
	idA = agenttest.IDA
	idB = agenttest.IDB
)

var errDisk = errors.New("injected: input/output error")

// faultyStore is the real store with writes or reads that fail on demand,
// as a failing disk would make them.
type faultyStore struct {
	*store.Store
	mu    sync.Mutex
	fail  map[string]error // method name -> error it returns
	calls map[string]int   // method name -> calls of it that could fail
}

func (f *faultyStore) set(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
	} else {
		f.fail[method] = err
	}
}

func (f *faultyStore) err(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	return f.fail[method]
}

func (f *faultyStore) called(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *faultyStore) BeginHandover(h store.Handover) error {
	if err := f.err("BeginHandover"); err != nil {
		return err
	}
	return f.Store.BeginHandover(h)
}

func (f *faultyStore) Retire(h store.Handover) error {
	if err := f.err("Retire"); err != nil {
		return err
	}
	return f.Store.Retire(h)
}

func (f *faultyStore) AbortHandover(id string, gen uint64) error {
	if err := f.err("AbortHandover"); err != nil {
		return err
	}
	return f.Store.AbortHandover(id, gen)
}

func (f *faultyStore) Retired() (map[string]uint64, error) {
	if err := f.err("Retired"); err != nil {
		return nil, err
	}
	return f.Store.Retired()
}

func (f *faultyStore) Handovers() (map[string]store.Handover, error) {
	if err := f.err("Handovers"); err != nil {
		return nil, err
	}
	return f.Store.Handovers()
}

func (f *faultyStore) Adoptions() (map[string]store.Adoption, error) {
	if err := f.err("Adoptions"); err != nil {
		return nil, err
	}
	return f.Store.Adoptions()
}

func (f *faultyStore) RemoveAdoption(id string) error {
	if err := f.err("RemoveAdoption"); err != nil {
		return err
	}
	return f.Store.RemoveAdoption(id)
}

func (f *faultyStore) ReleaseDrain(id string) (bool, error) {
	if err := f.err("ReleaseDrain"); err != nil {
		return false, err
	}
	return f.Store.ReleaseDrain(id)
}

func openStore(t *testing.T) *faultyStore {
	t.Helper()
	s, err := store.Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &faultyStore{Store: s, fail: map[string]error{}, calls: map[string]int{}}
}

// fakeHV is an in-memory libvirt for the operations: a migration moves the
// domain away unless migrate says otherwise.
type fakeHV struct {
	mu        sync.Mutex
	domains   map[string]hypervisor.Domain
	listErr   error
	migrate   func(id string) error // nil: the domain leaves
	migrated  []string
	shutdowns []string
}

func newFakeHV(domains ...hypervisor.Domain) *fakeHV {
	h := &fakeHV{domains: map[string]hypervisor.Domain{}}
	for _, d := range domains {
		h.domains[d.UUID] = d
	}
	return h
}

func (h *fakeHV) List(context.Context) ([]hypervisor.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.listErr != nil {
		return nil, h.listErr
	}
	var out []hypervisor.Domain
	for _, d := range h.domains {
		out = append(out, d)
	}
	return out, nil
}

func (h *fakeHV) Shutdown(_ context.Context, id string, _ time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shutdowns = append(h.shutdowns, id)
	d := h.domains[id]
	d.State = hypervisor.StateStopped
	h.domains[id] = d
	return nil
}

func (h *fakeHV) Migrate(_ context.Context, id, destURI, migrateURI string) error {
	h.mu.Lock()
	fn := h.migrate
	h.migrated = append(h.migrated, id)
	h.mu.Unlock()
	if fn != nil {
		return fn(id)
	}
	h.leave(id)
	return nil
}

func (h *fakeHV) leave(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.domains, id)
}

func (h *fakeHV) migrations() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.migrated)
}

type reports struct {
	mu  sync.Mutex
	got []api.MigrationReport
}

func (r *reports) ReportMigration(_ context.Context, rep api.MigrationReport) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, rep)
	return nil
}

func (r *reports) all() []api.MigrationReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

type announcer struct {
	mu     sync.Mutex
	got    []store.Adoption
	fail   error
	toNode string // the node id the destination answers with
}

func (a *announcer) AnnounceAdoption(_ context.Context, dest string, ad store.Adoption) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return "", a.fail
	}
	a.got = append(a.got, ad)
	return a.toNode, nil
}

func (a *announcer) announced() []store.Adoption {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.got)
}

type rig struct {
	m        *Manager
	st       Store
	hv       *fakeHV
	rep      *reports
	ann      *announcer
	triggers atomic.Int32
}

func newRig(t *testing.T, st Store, hv *fakeHV) *rig {
	t.Helper()
	return newRigOn(t, st, hv, nil, 5*time.Millisecond)
}

// newRigOn is newRig on clk (nil: the wall clock).
func newRigOn(t *testing.T, st Store, hv *fakeHV, clk Clock, retry time.Duration) *rig {
	t.Helper()
	r := &rig{st: st, hv: hv, rep: &reports{}, ann: &announcer{}}
	r.m = New(Config{NodeID: "node-1", Hypervisor: hv, Store: st, Reporter: r.rep, Announcer: r.ann,
		Trigger: func() { r.triggers.Add(1) }, RetryInterval: retry, Clock: clk,
		Prove: func(vmID string, gen uint64) string { return structs.AdoptionProof("node-1-key", vmID, gen) }})
	t.Cleanup(r.m.Close)
	return r
}

func running(id string, gen uint64) hypervisor.Domain {
	return hypervisor.Domain{UUID: id, Name: "chime-" + id[:1], State: hypervisor.StateRunning,
		Meta: &hypervisor.Meta{VMID: id, Generation: gen}}
}

func desiredHere(id string, gen uint64, migrate bool) api.DesiredState {
	vm := api.DesiredVM{ID: id, Name: id[:1], DesiredState: structs.DesiredRunning, Generation: gen,
		Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
	if migrate {
		vm.Migrate = &api.MigrationOrder{TaskID: "task-1", ToNodeID: "node-2", DestURI: "qemu+tcp://10.0.0.2/system", MigrateURI: "tcp://10.0.0.2"}
	}
	return api.DesiredState{VMs: []api.DesiredVM{vm}, Index: 5}
}

// poll is agenttest.Poll.
var poll = agenttest.Poll

// startsHere reports whether the reconciler would start vm on this node
// with the holds the manager gives (the domain is not here any more).
func startsHere(t *testing.T, m *Manager, ds api.DesiredState) bool {
	t.Helper()
	hold, err := m.Hold(ds)
	if err != nil {
		t.Fatalf("hold: %v", err)
	}
	for _, a := range reconcile.Plan(ds.VMs, nil, reconcile.PlanOptions{Hold: hold}) {
		if a.Kind == reconcile.ActionStart {
			return true
		}
	}
	return false
}

func waitReport(t *testing.T, r *rig) api.MigrationReport {
	t.Helper()
	poll(t, "the migration report", func() (bool, any) { return len(r.rep.all()) == 1, r.rep.all() })
	return r.rep.all()[0]
}

// TestOrderedMigrationRefusedWithoutHandoverRecord: when the hand-over
// cannot be recorded before the migration, libvirt is not asked to migrate
// and the failure is reported.
func TestOrderedMigrationRefusedWithoutHandoverRecord(t *testing.T) {
	st := openStore(t)
	st.set("BeginHandover", errDisk)
	r := newRig(t, st, newFakeHV(running(idA, 10)))
	r.m.AfterDesired(context.Background(), desiredHere(idA, 10, true))
	rep := waitReport(t, r)
	if rep.OK || !strings.Contains(rep.Error, "not migrated") || !strings.Contains(rep.Error, errDisk.Error()) {
		t.Fatalf("report = %+v; want a failure saying it was not migrated and why", rep)
	}
	if got := r.hv.migrations(); len(got) != 0 {
		t.Fatalf("libvirt was asked to migrate %v without a hand-over record", got)
	}
}

// TestClosedStoreRefusesMigrationAndKeepsTheHold: with the state file
// closed (every record write and read fails) the ordered migration is
// refused, and the reconciler's inputs fail instead of dropping the holds.
func TestClosedStoreRefusesMigrationAndKeepsTheHold(t *testing.T) {
	st := openStore(t)
	ds := desiredHere(idA, 10, true)
	if err := st.Retire(store.Handover{VMID: idA, Generation: 10}); err != nil {
		t.Fatal(err) // a hand-over that happened before: generation 10 must never start here
	}
	r := newRig(t, st, newFakeHV(running(idA, 10)))
	if err := st.Store.Close(); err != nil {
		t.Fatal(err)
	}
	r.m.AfterDesired(context.Background(), ds)
	rep := waitReport(t, r)
	if rep.OK || rep.Error == "" {
		t.Fatalf("report = %+v; want a failure", rep)
	}
	if got := r.hv.migrations(); len(got) != 0 {
		t.Fatalf("migrated %v with an unusable store", got)
	}
	if hold, err := r.m.Hold(ds); err == nil {
		t.Fatalf("Hold with an unreadable store = %v, nil; want an error (fail safe: change nothing)", hold)
	}
}

// TestRetireFailsAfterLibvirtMovedTheDomain: libvirt moved the domain, the
// fencing record cannot be written: the migration is reported done, the VM
// stays held, the write is retried, and once it lands the record is there.
func TestRetireFailsAfterLibvirtMovedTheDomain(t *testing.T) {
	st := openStore(t)
	st.set("Retire", errDisk)
	r := newRig(t, st, newFakeHV(running(idA, 10)))
	ds := desiredHere(idA, 10, true)
	r.m.AfterDesired(context.Background(), ds)
	if rep := waitReport(t, r); !rep.OK {
		t.Fatalf("report = %+v; want OK (the domain left)", rep)
	}
	// The servers have not moved the placement yet: it still says "here".
	ds.VMs[0].Migrate = nil
	poll(t, "the migration to end", func() (bool, any) {
		r.m.mu.Lock()
		defer r.m.mu.Unlock()
		return len(r.m.inflight) == 0, r.m.inflight
	})
	if startsHere(t, r.m, ds) {
		t.Fatal("the generation that left would be started here while its record is unsaved")
	}
	r.m.mu.Lock()
	unsaved := r.m.unsaved[idA]
	r.m.mu.Unlock()
	if unsaved.Generation != 10 {
		t.Fatalf("in-memory fence = %+v; want generation 10", unsaved)
	}

	st.set("Retire", nil) // the disk recovers
	poll(t, "the retried fencing record", func() (bool, any) {
		ret, err := st.Retired()
		return err == nil && ret[idA] == 10, ret
	})
	poll(t, "the in-memory fence to be dropped", func() (bool, any) {
		r.m.mu.Lock()
		defer r.m.mu.Unlock()
		_, ok := r.m.unsaved[idA]
		return !ok, r.m.unsaved
	})
	if open, _ := st.Handovers(); len(open) != 0 {
		t.Fatalf("hand-over records after retire = %v", open)
	}
	if startsHere(t, r.m, ds) {
		t.Fatal("the retired generation would be started here")
	}
}

// TestDomainGoneWhenOrderedAndRetireFails: the domain already left (an
// earlier process migrated it) and the record cannot be written: reported
// with its outcome unknown (absence proves nothing, RC4), held in memory,
// never started here.
func TestDomainGoneWhenOrderedAndRetireFails(t *testing.T) {
	st := openStore(t)
	st.set("Retire", errDisk)
	r := newRig(t, st, newFakeHV())
	ds := desiredHere(idA, 10, true)
	r.m.AfterDesired(context.Background(), ds)
	if rep := waitReport(t, r); rep.OK || !rep.Unknown {
		t.Fatalf("report = %+v; want the outcome unknown", rep)
	}
	ds.VMs[0].Migrate = nil
	poll(t, "the migration to end", func() (bool, any) {
		r.m.mu.Lock()
		defer r.m.mu.Unlock()
		return len(r.m.inflight) == 0, r.m.inflight
	})
	if startsHere(t, r.m, ds) {
		t.Fatal("a generation that left would be started here")
	}
}

// TestMigrationFailsDomainStays: the domain is still here after a failed
// migration: the hand-over record is cleared and the VM is managed again.
func TestMigrationFailsDomainStays(t *testing.T) {
	st := openStore(t)
	hv := newFakeHV(running(idA, 10))
	hv.migrate = func(string) error { return errors.New("injected: connection refused") }
	r := newRig(t, st, hv)
	ds := desiredHere(idA, 10, true)
	r.m.AfterDesired(context.Background(), ds)
	if rep := waitReport(t, r); rep.OK || !strings.Contains(rep.Error, "connection refused") {
		t.Fatalf("report = %+v; want the libvirt error", rep)
	}
	poll(t, "the migration to end", func() (bool, any) {
		r.m.mu.Lock()
		defer r.m.mu.Unlock()
		return len(r.m.inflight) == 0, r.m.inflight
	})
	if open, err := st.Handovers(); err != nil || len(open) != 0 {
		t.Fatalf("hand-over records = %v, %v; want none", open, err)
	}
	ds.VMs[0].Migrate = nil
	if hold, err := r.m.Hold(ds); err != nil || len(hold) != 0 {
		t.Fatalf("hold = %v, %v; want nothing held", hold, err)
	}
}

// TestHoldFailsWhenARecordCannotBeRead: an unreadable fencing record is
// not an empty one.
func TestHoldFailsWhenARecordCannotBeRead(t *testing.T) {
	for _, method := range []string{"Retired", "Handovers", "Adoptions"} {
		t.Run(method, func(t *testing.T) {
			st := openStore(t)
			r := newRig(t, st, newFakeHV())
			st.set(method, errDisk)
			if hold, err := r.m.Hold(desiredHere(idA, 10, false)); !errors.Is(err, errDisk) {
				t.Fatalf("Hold = %v, %v; want the read error", hold, err)
			}
		})
	}
}

// TestSettleHandoversOfAnEarlierProcess: a hand-over record left open by a
// process that died mid-migration holds its VM, and the next desired state
// settles it by what libvirt shows.
func TestSettleHandoversOfAnEarlierProcess(t *testing.T) {
	tests := []struct {
		name        string
		domains     []hypervisor.Domain
		listErr     error
		wantRetired uint64
		wantOpen    int
		wantStarts  bool
	}{
		{name: "domain gone: it left, the generation is retired",
			wantRetired: 10},
		{name: "domain still here: it did not leave, the record is cleared",
			domains:    []hypervisor.Domain{running(idA, 10)},
			wantStarts: true},
		{name: "libvirt cannot be listed: the record stays and the VM is held",
			listErr:  errors.New("injected: libvirtd unreachable"),
			wantOpen: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t)
			if err := st.BeginHandover(store.Handover{VMID: idA, Generation: 10}); err != nil {
				t.Fatal(err)
			}
			hv := newFakeHV(tt.domains...)
			hv.listErr = tt.listErr
			r := newRig(t, st, hv)
			ds := desiredHere(idA, 10, false)
			if startsHere(t, r.m, ds) {
				t.Fatal("an open hand-over does not hold its VM")
			}
			r.m.AfterDesired(context.Background(), ds)
			ret, err := st.Retired()
			open, err2 := st.Handovers()
			if err != nil || err2 != nil || ret[idA] != tt.wantRetired || len(open) != tt.wantOpen {
				t.Fatalf("retired %v, open %v (%v, %v); want retired %d, %d open", ret, open, err, err2, tt.wantRetired, tt.wantOpen)
			}
			// The plan is made without the domain: only a record-free VM may start.
			if got := startsHere(t, r.m, ds); got != tt.wantStarts {
				t.Fatalf("would start = %v, want %v", got, tt.wantStarts)
			}
		})
	}
}

// TestRefusedAdoptionIsNotHeldWhenItsRecordStays: the servers refused an
// adoption and its record cannot be removed: the copy is not held (the
// reconciler destroys it), and the removal is retried.
func TestRefusedAdoptionIsNotHeldWhenItsRecordStays(t *testing.T) {
	st := openStore(t)
	r := newRig(t, st, newFakeHV())
	if err := r.m.Adopt(store.Adoption{VMID: idB, Name: "b", Generation: 7, FromNode: "node-2"}); err != nil {
		t.Fatal(err)
	}
	ds := api.DesiredState{}
	if hold, err := r.m.Hold(ds); err != nil || !slices.Equal(hold, []string{idB}) {
		t.Fatalf("hold before the servers decide = %v, %v; want [%s]", hold, err, idB)
	}
	st.set("RemoveAdoption", errDisk)
	r.m.RejectAdoptions([]string{idB})
	if hold, err := r.m.Hold(ds); err != nil || len(hold) != 0 {
		t.Fatalf("hold after the refusal = %v, %v; want nothing (destroy the copy)", hold, err)
	}
	st.set("RemoveAdoption", nil)
	poll(t, "the retried removal", func() (bool, any) {
		ads, err := st.Adoptions()
		return err == nil && len(ads) == 0, ads
	})
}

func TestAdopt(t *testing.T) {
	st := openStore(t)
	r := newRig(t, st, newFakeHV())
	if err := r.m.Adopt(store.Adoption{VMID: "not-a-uuid", Generation: 1}); !errors.Is(err, structs.ErrInvalid) {
		t.Fatalf("bad uuid: %v; want ErrInvalid", err)
	}
	if err := r.m.Adopt(store.Adoption{VMID: idB}); !errors.Is(err, structs.ErrInvalid) {
		t.Fatalf("generation 0: %v; want ErrInvalid", err)
	}
	before := r.triggers.Load()
	if err := r.m.Adopt(store.Adoption{VMID: idB, Generation: 3}); err != nil {
		t.Fatal(err)
	}
	if ads, _ := st.Adoptions(); ads[idB].Generation != 3 || r.triggers.Load() == before {
		t.Fatalf("adoptions = %v, triggered %v; want it recorded and a pass asked for", ads, r.triggers.Load() > before)
	}
	if _, err := r.m.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.m.Adopt(store.Adoption{VMID: idA, Generation: 3}); !errors.Is(err, structs.ErrConflict) {
		t.Fatalf("adopt on a drained node: %v; want ErrConflict", err)
	}
}

// TestLocalMigrate covers the node-local migration's records: nothing
// without a hand-over record, a success retired and logged once, and a
// success whose record write fails reported, held and retried.
func TestLocalMigrate(t *testing.T) {
	lo := MigrateRequest{Interface: "lo", UUID: idA, Dest: "127.0.0.2"}

	t.Run("no hand-over record: not announced, not migrated", func(t *testing.T) {
		st := openStore(t)
		st.set("BeginHandover", errDisk)
		r := newRig(t, st, newFakeHV(running(idA, 10)))
		res, err := r.m.Migrate(context.Background(), lo)
		if err != nil || len(res) != 1 || res[0].OK || !strings.Contains(res[0].Error, "not migrated") {
			t.Fatalf("migrate = %+v, %v; want one refused result", res, err)
		}
		if len(r.ann.announced()) != 0 || len(r.hv.migrations()) != 0 {
			t.Fatalf("announced %v, migrated %v; want neither", r.ann.announced(), r.hv.migrations())
		}
	})

	t.Run("success: retired and logged for the servers", func(t *testing.T) {
		st := openStore(t)
		r := newRig(t, st, newFakeHV(running(idA, 10)))
		res, err := r.m.Migrate(context.Background(), lo)
		if err != nil || len(res) != 1 || !res[0].OK || res[0].Error != "" {
			t.Fatalf("migrate = %+v, %v", res, err)
		}
		if ann := r.ann.announced(); len(ann) != 1 || ann[0].VMID != idA || ann[0].Generation != 10 || ann[0].FromNode != "node-1" ||
			!structs.AdoptionProofValid("node-1-key", idA, 10, ann[0].Proof) {
			t.Fatalf("announced %+v (want the source's proof for generation 10)", ann)
		}
		ret, _ := st.Retired()
		logged, _, _ := st.PendingMigrations()
		if ret[idA] != 10 || !slices.Equal(logged, []structs.LocalMigration{{VMID: idA, ToAddr: "127.0.0.2", Generation: 10}}) {
			t.Fatalf("retired %v, logged %v", ret, logged)
		}
	})

	t.Run("announcement refused: record cleared, not migrated", func(t *testing.T) {
		st := openStore(t)
		r := newRig(t, st, newFakeHV(running(idA, 10)))
		r.ann.fail = errors.New("HTTP 409: this node is locally drained")
		res, err := r.m.Migrate(context.Background(), lo)
		if err != nil || len(res) != 1 || res[0].OK || len(r.hv.migrations()) != 0 {
			t.Fatalf("migrate = %+v, %v, migrated %v", res, err, r.hv.migrations())
		}
		if open, _ := st.Handovers(); len(open) != 0 {
			t.Fatalf("open hand-overs = %v", open)
		}
	})

	t.Run("record write fails after libvirt moved it: held, retried, logged once", func(t *testing.T) {
		st := openStore(t)
		st.set("Retire", errDisk)
		r := newRig(t, st, newFakeHV(running(idA, 10)))
		res, err := r.m.Migrate(context.Background(), lo)
		if err != nil || len(res) != 1 || !res[0].OK || !strings.Contains(res[0].Error, "not saved") {
			t.Fatalf("migrate = %+v, %v; want OK with the unsaved record named", res, err)
		}
		if startsHere(t, r.m, desiredHere(idA, 10, false)) {
			t.Fatal("the generation that left would be started here")
		}
		st.set("Retire", nil)
		poll(t, "the retried record", func() (bool, any) {
			logged, _, err := st.PendingMigrations()
			return err == nil && len(logged) == 1, logged
		})
		r.m.Close() // no retry left running
		if logged, _, _ := st.PendingMigrations(); len(logged) != 1 {
			t.Fatalf("logged %v; want the migration once", logged)
		}
	})
}

// TestDrainReleaseNotRecorded: a release the store cannot record leaves
// the node drained; the next desired state releases it.
func TestDrainReleaseNotRecorded(t *testing.T) {
	st := openStore(t)
	hv := newFakeHV(running(idA, 10))
	r := newRig(t, st, hv)
	res, err := r.m.Drain(context.Background())
	if err != nil || res.DrainID == "" || len(res.Running) != 0 || !slices.Equal(res.Stopped, []string{"chime-a"}) {
		t.Fatalf("drain = %+v, %v", res, err)
	}
	if !slices.Equal(hv.shutdowns, []string{idA}) {
		t.Fatalf("shutdowns before the first sync = %v; want the running VM stopped directly", hv.shutdowns)
	}
	ds := api.DesiredState{ReleasedDrainID: res.DrainID}
	st.set("ReleaseDrain", errDisk)
	r.m.AfterDesired(context.Background(), ds)
	if !r.m.Drained() {
		t.Fatal("released in memory although the release was not recorded")
	}
	if on, _ := st.Drained(); !on {
		t.Fatal("drain flag cleared on disk")
	}
	st.set("ReleaseDrain", nil)
	r.m.AfterDesired(context.Background(), ds)
	if r.m.Drained() {
		t.Fatal("still drained after a recorded release")
	}
	if on, _ := st.Drained(); on {
		t.Fatal("drain flag still set on disk")
	}
}

// TestBackgroundWorkRunsOnTheClock: on a manual clock, an ordered
// migration and the retries of its fencing record run only when the clock
// is advanced, at the back-off's times (1 s, then 2 s, then 4 s); Close
// drops the retry still waiting.
func TestBackgroundWorkRunsOnTheClock(t *testing.T) {
	for _, closeEarly := range []bool{false, true} {
		t.Run(map[bool]string{false: "retried until written", true: "closed while waiting"}[closeEarly], func(t *testing.T) {
			st := openStore(t)
			st.set("Retire", errDisk)
			clk := clock.NewManual(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
			r := newRigOn(t, st, newFakeHV(running(idA, 10)), clk, time.Second)
			r.m.AfterDesired(context.Background(), desiredHere(idA, 10, true))
			if got := r.hv.migrations(); len(got) != 0 {
				t.Fatalf("migrated %q before the clock moved", got)
			}
			clk.Advance(0)
			if got := r.hv.migrations(); !slices.Equal(got, []string{idA}) || len(r.rep.all()) != 1 || st.called("Retire") != 1 {
				t.Fatalf("after Advance(0): migrated %q, reports %v, %d Retire calls; want one of each", got, r.rep.all(), st.called("Retire"))
			}
			steps := []struct {
				advance time.Duration
				calls   int
			}{{999 * time.Millisecond, 1}, {time.Millisecond, 2}, {1999 * time.Millisecond, 2}, {time.Millisecond, 3}}
			for _, s := range steps {
				clk.Advance(s.advance)
				if got := st.called("Retire"); got != s.calls {
					t.Fatalf("at %v: %d Retire calls, want %d", clk.Now().Sub(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)), got, s.calls)
				}
			}
			if closeEarly {
				r.m.Close()
				clk.Advance(time.Hour)
				if got := st.called("Retire"); got != 3 {
					t.Fatalf("%d Retire calls after Close; want no more than the 3 before", got)
				}
				return
			}
			st.set("Retire", nil)
			clk.Advance(4 * time.Second)
			if ret, err := st.Retired(); err != nil || ret[idA] != 10 || st.called("Retire") != 4 {
				t.Fatalf("retired %v, %v after %d calls; want generation 10 written by the 4th", ret, err, st.called("Retire"))
			}
			r.m.mu.Lock()
			_, unsaved := r.m.unsaved[idA]
			r.m.mu.Unlock()
			if unsaved {
				t.Fatal("in-memory fence kept after the record was written")
			}
		})
	}
}

// TestOrderedMigrationOutcome: what the source reports is libvirt's word,
// or unknown (uniqueness rule 8): OK only when the migrate call returned
// success, failed only when the domain still runs here, unknown when it
// does not (RC4: "absent here" is not "migrated") or libvirt cannot say.
// Whatever does not run here any more is never started here again.
func TestOrderedMigrationOutcome(t *testing.T) {
	shutOffMigrated := running(idA, 10)
	shutOffMigrated.State, shutOffMigrated.Reason = hypervisor.StateStopped, "migrated"
	tests := []struct {
		name      string
		domains   []hypervisor.Domain
		migrate   func(hv *fakeHV) func(string) error // nil: the domain leaves, success
		wantOK    bool
		wantUnk   bool
		wantCalls int  // libvirt migrate calls
		wantOpen  bool // hand-over record still open (held until settled)
		startable bool // the reconciler may start it here afterwards (no longer ordered)
	}{
		{"libvirt reports success", []hypervisor.Domain{running(idA, 10)}, nil, true, false, 1, false, false},
		{"libvirt fails, domain still runs here: failed", []hypervisor.Domain{running(idA, 10)},
			func(*fakeHV) func(string) error { return func(string) error { return errors.New("aborted") } }, false, false, 1, false, true},
		{"libvirt fails, domain gone: unknown", []hypervisor.Domain{running(idA, 10)},
			func(hv *fakeHV) func(string) error {
				return func(id string) error { hv.leave(id); return errors.New("connection lost after the hand-over") }
			}, false, true, 1, false, false},
		{"libvirt fails, domain shut off (migrated) here: unknown", []hypervisor.Domain{running(idA, 10)},
			func(hv *fakeHV) func(string) error {
				return func(id string) error {
					hv.mu.Lock()
					hv.domains[id] = shutOffMigrated
					hv.mu.Unlock()
					return errors.New("connection lost")
				}
			}, false, true, 1, false, false},
		{"libvirt fails, then cannot be listed: unknown, held", []hypervisor.Domain{running(idA, 10)},
			func(hv *fakeHV) func(string) error {
				return func(id string) error {
					hv.mu.Lock()
					hv.listErr = errors.New("libvirtd down")
					hv.mu.Unlock()
					return errors.New("connection lost")
				}
			}, false, true, 1, true, false},
		{"domain not here when ordered: unknown, never migrated", nil, nil, false, true, 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t)
			hv := newFakeHV(tt.domains...)
			if tt.migrate != nil {
				hv.migrate = tt.migrate(hv)
			}
			r := newRig(t, st, hv)
			ds := desiredHere(idA, 10, true)
			r.m.AfterDesired(context.Background(), ds)
			rep := waitReport(t, r)
			if rep.OK != tt.wantOK || rep.Unknown != tt.wantUnk {
				t.Fatalf("report = %+v; want ok=%v unknown=%v", rep, tt.wantOK, tt.wantUnk)
			}
			if got := len(hv.migrations()); got != tt.wantCalls {
				t.Fatalf("libvirt migrate calls = %d, want %d", got, tt.wantCalls)
			}
			poll(t, "the migration to end", func() (bool, any) {
				r.m.mu.Lock()
				defer r.m.mu.Unlock()
				return len(r.m.inflight) == 0, r.m.inflight
			})
			open, err := st.Handovers()
			if err != nil || (len(open) == 1) != tt.wantOpen {
				t.Fatalf("hand-over records = %v, %v; want open=%v", open, err, tt.wantOpen)
			}
			hv.mu.Lock()
			hv.listErr = nil
			hv.mu.Unlock()
			ds.VMs[0].Migrate = nil
			if !tt.wantOpen {
				if got := startsHere(t, r.m, ds); got && !tt.startable {
					t.Fatal("a generation that may run elsewhere would be started here")
				}
			}
		})
	}
}

// TestHeldVMIsLeftAlone: a VM the servers hold (migration outcome
// unknown) is never started here, whatever the local records say.
func TestHeldVMIsLeftAlone(t *testing.T) {
	r := newRig(t, openStore(t), newFakeHV())
	ds := desiredHere(idA, 10, false)
	if !startsHere(t, r.m, ds) {
		t.Fatal("test setup: an absent VM placed here should be started")
	}
	ds.VMs[0].Held = true
	if startsHere(t, r.m, ds) {
		t.Fatal("a held VM would be started here")
	}
}

// TestMigratingCoversInflightAndOpenRecords: the VMs whose "running here"
// proves nothing, because a migration from here may be moving them.
func TestMigratingCoversInflightAndOpenRecords(t *testing.T) {
	st := openStore(t)
	r := newRig(t, st, newFakeHV())
	if got, err := r.m.Migrating(); err != nil || len(got) != 0 {
		t.Fatalf("Migrating = %v, %v; want none", got, err)
	}
	if err := st.BeginHandover(store.Handover{VMID: idA, Generation: 10}); err != nil {
		t.Fatal(err)
	}
	if !r.m.claim(idB, "task-2") {
		t.Fatal("claim failed")
	}
	got, err := r.m.Migrating()
	if err != nil || !got[idA] || !got[idB] || len(got) != 2 {
		t.Fatalf("Migrating = %v, %v; want %s (open record) and %s (in flight)", got, err, idA, idB)
	}
}

// TestMigrationWaitsForTheAdoptedMetadata: a domain that arrived by an
// earlier migration still carries the generation it arrived with until the
// reconciler rewrites it; migrated so, the destination would take it for a
// stale copy. The order waits (no libvirt call, no report) and runs with
// the next desired state once the metadata is current.
func TestMigrationWaitsForTheAdoptedMetadata(t *testing.T) {
	tests := []struct {
		name       string
		domainGen  uint64
		wantCalls  int
		wantReport bool
	}{
		{"metadata still at the adopted generation: waits", 6, 0, false},
		{"metadata at the placement generation: migrates", 10, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hv := newFakeHV(running(idA, tt.domainGen))
			r := newRig(t, openStore(t), hv)
			ds := desiredHere(idA, 10, true)
			ds.VMs[0].AdoptGeneration = 6
			r.m.AfterDesired(context.Background(), ds)
			if tt.wantReport {
				waitReport(t, r)
			} else {
				poll(t, "the deferred order to release the VM", func() (bool, any) {
					r.m.mu.Lock()
					defer r.m.mu.Unlock()
					return len(r.m.inflight) == 0, r.m.inflight
				})
				if got := r.rep.all(); len(got) != 0 {
					t.Fatalf("reports = %+v, want none", got)
				}
			}
			if got := len(hv.migrations()); got != tt.wantCalls {
				t.Fatalf("libvirt migrate calls = %d, want %d", got, tt.wantCalls)
			}
			if tt.wantReport {
				return
			}
			// The reconciler rewrote the metadata; the next desired state
			// orders the migration again and it runs.
			hv.mu.Lock()
			hv.domains[idA] = running(idA, 10)
			hv.mu.Unlock()
			r.m.AfterDesired(context.Background(), ds)
			if rep := waitReport(t, r); !rep.OK {
				t.Fatalf("report after the metadata was rewritten = %+v, want OK", rep)
			}
		})
	}
}
