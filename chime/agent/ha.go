package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/hypervisor"
)

// migrations runs the live migrations the servers order (on the source
// node) and remembers which tasks are in flight.
type migrations struct {
	mu       sync.Mutex
	inflight map[string]string // vm id → task id of a migration running now
	reported map[string]bool   // task id + vm id → result acknowledged by the servers
	wg       sync.WaitGroup
}

func newMigrations() *migrations {
	return &migrations{inflight: map[string]string{}, reported: map[string]bool{}}
}

// haHold returns the VM ids the reconciler must leave alone because of an
// HA operation: incoming live migrations, migrations in flight from here,
// domains handed away (retired), and announced node-local adoptions.
func (a *Agent) haHold(ds *api.DesiredState) []string {
	var hold []string
	for _, in := range ds.Incoming {
		hold = append(hold, in.ID)
	}
	a.mig.mu.Lock()
	for id := range a.mig.inflight {
		hold = append(hold, id)
	}
	a.mig.mu.Unlock()
	retired, _ := a.store.Retired()
	adoptions, _ := a.store.Adoptions()
	desired := map[string]api.DesiredVM{}
	for _, vm := range ds.VMs {
		desired[vm.ID] = vm
	}
	for id, gen := range retired {
		if vm, ok := desired[id]; ok && vm.Generation <= gen {
			hold = append(hold, id) // still placed here at the generation we handed away
		}
	}
	for id := range adoptions {
		if vm, ok := desired[id]; ok && vm.AdoptGeneration != 0 {
			continue // the servers placed it here: Plan adopts it
		}
		hold = append(hold, id)
	}
	return hold
}

// afterDesired runs the HA side effects of a new desired state: start
// ordered migrations, forget decided adoptions, release a local drain.
func (a *Agent) afterDesired(ctx context.Context, ds api.DesiredState) {
	for _, vm := range ds.VMs {
		if vm.AdoptGeneration != 0 {
			if ads, _ := a.store.Adoptions(); ads[vm.ID].VMID != "" {
				_ = a.store.RemoveAdoption(vm.ID)
				a.logger.Info("node-local migration accepted by the servers", "vm", vm.Name, "generation", vm.Generation)
			}
		}
		if vm.Migrate != nil {
			a.startMigration(ctx, vm)
		}
	}
	if ds.ReleasedDrainID != "" {
		if id, _ := a.store.DrainID(); id == ds.ReleasedDrainID {
			_ = a.store.SetDrained(false)
			_ = a.store.SetDrainID("")
			a.mu.Lock()
			a.drained = false
			a.mu.Unlock()
			a.logger.Info("local drain released by the servers (node enabled)", "drain_id", id)
			a.rec.Trigger()
		}
	}
}

// startMigration runs one ordered live migration in the background.
func (a *Agent) startMigration(ctx context.Context, vm api.DesiredVM) {
	order := *vm.Migrate
	key := order.TaskID + "/" + vm.ID
	a.mig.mu.Lock()
	if _, busy := a.mig.inflight[vm.ID]; busy || a.mig.reported[key] {
		a.mig.mu.Unlock()
		return
	}
	a.mig.inflight[vm.ID] = order.TaskID
	a.mig.mu.Unlock()
	a.rec.Trigger() // the reconciler now holds this VM
	a.mig.wg.Add(1)
	go func() {
		defer a.mig.wg.Done()
		rep := a.migrate(ctx, vm, order)
		a.reportMigration(ctx, rep)
		a.mig.mu.Lock()
		delete(a.mig.inflight, vm.ID)
		a.mig.reported[key] = true
		a.mig.mu.Unlock()
		a.rec.Trigger()
		a.requestHeartbeat()
	}()
}

// migrate performs the migration and decides what to report. The domain's
// absence after an error means it left (libvirt undefines the source only
// on success), so it is recorded as retired either way: this node must
// never start that generation again.
func (a *Agent) migrate(ctx context.Context, vm api.DesiredVM, order api.MigrationOrder) api.MigrationReport {
	log := a.logger.Named("migrate")
	rep := api.MigrationReport{TaskID: order.TaskID, VMID: vm.ID, Generation: vm.Generation}
	here, err := a.domainHere(ctx, vm.ID)
	if err != nil {
		rep.Error = "list libvirt domains: " + err.Error()
		return rep
	}
	if here == nil {
		if gen, _ := a.store.Retired(); gen[vm.ID] >= vm.Generation {
			rep.OK = true // migrated before a restart; report again
			return rep
		}
		_ = a.store.SetRetired(vm.ID, vm.Generation)
		rep.OK = true
		log.Warn("ordered to migrate a VM whose domain is not here: it left with a migration", "vm", vm.Name)
		return rep
	}
	if here.State != hypervisor.StateRunning {
		rep.Error = "vm is not running here (" + here.State + "): nothing to live-migrate"
		return rep
	}
	start := time.Now()
	log.Info("live migration starting", "vm", vm.Name, "dest", order.DestURI, "migrate_uri", order.MigrateURI, "task", order.TaskID)
	err = a.hv.Migrate(ctx, vm.ID, order.DestURI, order.MigrateURI)
	if err == nil {
		_ = a.store.SetRetired(vm.ID, vm.Generation)
		rep.OK = true
		log.Info("live migration done", "vm", vm.Name, "took", time.Since(start).Round(time.Millisecond).String())
		return rep
	}
	if d, lerr := a.domainHere(ctx, vm.ID); lerr == nil && d == nil {
		_ = a.store.SetRetired(vm.ID, vm.Generation)
		rep.OK = true
		log.Warn("migration call failed but the domain left this node", "vm", vm.Name, "error", err)
		return rep
	}
	rep.Error = err.Error()
	log.Error("live migration failed; the VM keeps running here", "vm", vm.Name, "error", err)
	return rep
}

func (a *Agent) domainHere(ctx context.Context, id string) (*hypervisor.Domain, error) {
	ds, err := a.hv.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		if strings.EqualFold(d.UUID, id) {
			return &d, nil
		}
	}
	return nil, nil
}

// reportMigration tells the servers, retrying while they are unreachable.
func (a *Agent) reportMigration(ctx context.Context, rep api.MigrationReport) {
	for attempt := 0; ctx.Err() == nil && attempt < 100; attempt++ {
		err := a.client.ReportMigration(ctx, rep)
		if err == nil {
			return
		}
		if errors.Is(err, structs.ErrForbidden) || errors.Is(err, structs.ErrNotFound) || errors.Is(err, structs.ErrInvalid) {
			a.logger.Warn("servers refused the migration report", "vm", rep.VMID, "error", err)
			return
		}
		if !sleepCtx(ctx, backoff(attempt)) {
			return
		}
	}
}

// --- node-local operations (management network down) ---

// DrainResult answers POST /drain on the local socket.
type DrainResult struct {
	DrainID string   `json:"drain_id"`
	Stopped []string `json:"stopped"`           // chime domains no longer running
	Running []string `json:"running,omitempty"` // still running when the wait ended
}

// localDrain sets the local drain flag, stops every chime VM and waits
// (bounded) until none runs. The flag survives restarts and is reported to
// the servers when they are reachable; `chime node enable` releases it.
func (a *Agent) localDrain(ctx context.Context) (DrainResult, error) {
	id, err := a.store.DrainID()
	if err != nil {
		return DrainResult{}, err
	}
	if id == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
		if err := a.store.SetDrainID(id); err != nil {
			return DrainResult{}, err
		}
	}
	if err := a.store.SetDrained(true); err != nil {
		return DrainResult{}, err
	}
	a.mu.Lock()
	a.drained = true
	synced := a.desired != nil
	a.mu.Unlock()
	a.logger.Info("local drain: stopping every VM on this node", "drain_id", id)
	if !synced {
		// The reconciler runs only after a sync; a drain must work without
		// the servers, so stop the domains directly.
		a.stopAllDirect(ctx)
	}
	a.rec.Trigger()
	res := DrainResult{DrainID: id}
	deadline := time.Now().Add(2*a.cfg.ShutdownGrace + 30*time.Second)
	for {
		running, stopped, err := a.chimeDomains(ctx)
		if err != nil {
			return res, err
		}
		res.Running, res.Stopped = running, stopped
		if len(running) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		if !synced {
			a.stopAllDirect(ctx)
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	a.requestHeartbeat()
	return res, nil
}

func (a *Agent) stopAllDirect(ctx context.Context) {
	ds, err := a.hv.List(ctx)
	if err != nil {
		return
	}
	for _, d := range ds {
		if d.Meta != nil && d.State == hypervisor.StateRunning {
			if err := a.hv.Shutdown(ctx, d.UUID, a.cfg.ShutdownGrace); err != nil {
				a.logger.Warn("local drain: shutdown failed", "vm", d.Name, "error", err)
			}
		}
	}
}

func (a *Agent) chimeDomains(ctx context.Context) (running, stopped []string, err error) {
	ds, err := a.hv.List(ctx)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range ds {
		if d.Meta == nil {
			continue
		}
		if d.State == hypervisor.StateRunning || d.State == hypervisor.StateOther {
			running = append(running, d.Name)
		} else {
			stopped = append(stopped, d.Name)
		}
	}
	return running, stopped, nil
}

// MigrateRequest is POST /migrate on the local socket.
type MigrateRequest struct {
	Interface string `json:"interface"`
	UUID      string `json:"uuid,omitempty"`
	All       bool   `json:"all,omitempty"`
	Dest      string `json:"dest"`
}

// MigrateResult is one VM's outcome of a node-local migration.
type MigrateResult struct {
	VMID  string `json:"vm_id"`
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Took  string `json:"took,omitempty"`
	Error string `json:"error,omitempty"`
}

// validateLocalMigrate checks the request: the interface exists and the
// destination is an address of one of its subnets, so the migration stream
// really goes over that network.
func validateLocalMigrate(req MigrateRequest) error {
	if req.Interface == "" {
		return structs.Invalid("--interface", "is required")
	}
	ip := net.ParseIP(req.Dest)
	if ip == nil {
		return structs.Invalid("--dest", "%q is not an IP address", req.Dest)
	}
	if (req.UUID == "") == !req.All {
		return structs.Invalid("--uuid", "give exactly one of --uuid U or --all")
	}
	if req.UUID != "" && !structs.IsUUID(req.UUID) {
		return structs.Invalid("--uuid", "%q is not a uuid", req.UUID)
	}
	ifc, err := net.InterfaceByName(req.Interface)
	if err != nil {
		return structs.Invalid("--interface", "%q: %v", req.Interface, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return structs.Invalid("--interface", "%q: %v", req.Interface, err)
	}
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok && n.Contains(ip) {
			if ifc.Flags&net.FlagUp == 0 {
				return structs.Invalid("--interface", "%s is down", req.Interface)
			}
			return nil
		}
	}
	return structs.Invalid("--dest", "%s is not on a network of interface %s", req.Dest, req.Interface)
}

// localMigrate live-migrates VMs to the agent at req.Dest without the
// servers: the destination agent is told first (so it keeps the arriving
// domain), then libvirt migrates peer-to-peer over that network. The source
// records each success (reported when the servers are reachable) and never
// starts that generation again.
func (a *Agent) localMigrate(ctx context.Context, req MigrateRequest) ([]MigrateResult, error) {
	if err := validateLocalMigrate(req); err != nil {
		return nil, err
	}
	ds, err := a.hv.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list libvirt domains: %w", err)
	}
	var todo []hypervisor.Domain
	for _, d := range ds {
		if d.Meta == nil || d.State != hypervisor.StateRunning {
			continue
		}
		if req.All || strings.EqualFold(d.UUID, req.UUID) {
			todo = append(todo, d)
		}
	}
	if req.UUID != "" && len(todo) == 0 {
		return nil, structs.NotFound("--uuid", "no running chime VM %s on this node", req.UUID)
	}
	var out []MigrateResult
	for _, d := range todo {
		out = append(out, a.localMigrateOne(ctx, d, req.Dest))
	}
	a.requestHeartbeat()
	return out, nil
}

func (a *Agent) localMigrateOne(ctx context.Context, d hypervisor.Domain, dest string) MigrateResult {
	log := a.logger.Named("migrate")
	res := MigrateResult{VMID: d.UUID, Name: d.Name}
	ad := Adoption{VMID: d.UUID, Name: strings.TrimPrefix(d.Name, "chime-"), Generation: d.Meta.Generation, FromNode: a.nodeID}
	if err := announceAdoption(ctx, net.JoinHostPort(dest, strconv.Itoa(a.cfg.APIPort)), ad); err != nil {
		res.Error = "destination agent did not accept the adoption: " + err.Error()
		return res
	}
	a.mig.mu.Lock()
	a.mig.inflight[d.UUID] = "local"
	a.mig.mu.Unlock()
	defer func() {
		a.mig.mu.Lock()
		delete(a.mig.inflight, d.UUID)
		a.mig.mu.Unlock()
		a.rec.Trigger()
	}()
	start := time.Now()
	host := hostForURI(dest)
	err := a.hv.Migrate(ctx, d.UUID, "qemu+tcp://"+host+"/system", "tcp://"+host)
	if err != nil {
		if here, lerr := a.domainHere(ctx, d.UUID); lerr != nil || here != nil {
			res.Error = err.Error()
			log.Error("node-local migration failed; the VM keeps running here", "vm", d.Name, "error", err)
			return res
		}
	}
	_ = a.store.SetRetired(d.UUID, d.Meta.Generation)
	_ = a.store.AddMigration(structs.LocalMigration{VMID: d.UUID, ToAddr: dest, Generation: d.Meta.Generation})
	res.OK, res.Took = true, time.Since(start).Round(time.Millisecond).String()
	log.Info("node-local migration done", "vm", d.Name, "dest", dest, "took", res.Took)
	return res
}

// announceAdoption tells the destination agent a domain is coming.
func announceAdoption(ctx context.Context, addr string, ad Adoption) error {
	body, _ := json.Marshal(ad)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, "http://"+addr+"/v1/adopt", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e errorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, e.Error)
	}
	return nil
}

// handleAdopt records an announced adoption (agent API). It only makes
// this agent keep a domain that arrives; the servers decide whether the
// placement moves (they check the generation), and a refused adoption is
// destroyed.
func (a *Agent) handleAdopt(w http.ResponseWriter, r *http.Request) {
	var ad Adoption
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ad); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "body: " + err.Error()})
		return
	}
	if !structs.IsUUID(ad.VMID) || ad.Generation == 0 {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "vm_id must be a uuid and generation > 0"})
		return
	}
	a.mu.Lock()
	drained := a.drained
	a.mu.Unlock()
	if drained {
		writeJSON(w, http.StatusConflict, errorBody{Error: "this node is locally drained: it adopts nothing"})
		return
	}
	if err := a.store.AddAdoption(ad); err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error()})
		return
	}
	a.logger.Info("node-local migration announced", "vm", ad.Name, "generation", ad.Generation, "from", ad.FromNode)
	a.rec.Trigger()
	writeJSON(w, http.StatusOK, ad)
}

// adoptedObservations are the announced adoptions whose domain is here,
// for the heartbeat.
func (a *Agent) adoptedObservations(domains []hypervisor.Domain) []structs.VMObservation {
	ads, err := a.store.Adoptions()
	if err != nil || len(ads) == 0 {
		return nil
	}
	var out []structs.VMObservation
	for _, d := range domains {
		ad, ok := ads[strings.ToLower(d.UUID)]
		if !ok || d.Meta == nil || d.Meta.Generation != ad.Generation {
			continue
		}
		out = append(out, structs.VMObservation{VMID: ad.VMID, State: observedState(d.State), Reason: d.Reason, Generation: ad.Generation})
	}
	return out
}

// rejectAdoptions forgets adoptions the servers refused: the reconciler
// then destroys those domains as stale.
func (a *Agent) rejectAdoptions(ids []string) {
	for _, id := range ids {
		_ = a.store.RemoveAdoption(id)
		a.logger.Warn("servers refused a node-local adoption: destroying the adopted copy", "vm", id)
	}
	if len(ids) > 0 {
		a.rec.Trigger()
	}
}
