package handover

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// Node-local operations, for when the management network is down: local
// drain and node-local migration (`chime agent drain|migrate`), and the
// destination's side of the latter (Adopt).

// DrainResult is the outcome of a local drain.
type DrainResult struct {
	DrainID string
	Stopped []string // chime domains no longer running
	Running []string // still running when the wait ended
}

// Drain sets the local drain flag, stops every chime VM and waits
// (bounded) until none runs. The flag survives restarts and is reported to
// the servers when they are reachable; `chime node enable` releases it.
// It is BeginDrain followed by DrainProgress every half second until no
// chime domain runs or 2×grace+30 s have passed on the clock.
func (m *Manager) Drain(ctx context.Context) (DrainResult, error) {
	id, err := m.BeginDrain(ctx)
	if err != nil {
		return DrainResult{}, err
	}
	res := DrainResult{DrainID: id}
	deadline := m.cfg.Clock.Now().Add(2*m.cfg.ShutdownGrace + 30*time.Second)
	for {
		running, stopped, err := m.chimeDomains(ctx)
		if err != nil {
			return res, err
		}
		res.Running, res.Stopped = running, stopped
		if len(running) == 0 || m.cfg.Clock.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		m.stopUnsynced(ctx)
		clock.Sleep(ctx, m.cfg.Clock, 500*time.Millisecond)
	}
	m.cfg.Changed()
	return res, nil
}

// BeginDrain is the first half of Drain, for a caller that must not block
// (the simulator): it records the drain (flag and id together), stops the
// chime domains directly when the reconciler is not running yet (no sync:
// a drain must work without the servers), and asks for a reconcile pass.
// It returns the drain's id. DrainProgress is the wait.
func (m *Manager) BeginDrain(ctx context.Context) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(m.cfg.Rand, b[:]); err != nil {
		return "", fmt.Errorf("local drain id: %w", err)
	}
	id, err := m.cfg.Store.StartDrain(hex.EncodeToString(b[:]))
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	m.drained = true
	m.mu.Unlock()
	m.log.Info("local drain: stopping every VM on this node", "drain_id", id)
	m.stopUnsynced(ctx)
	m.cfg.Trigger()
	return id, nil
}

// DrainProgress is one round of Drain's wait: it lists the chime domains
// and, while some still run, stops them directly again when the reconciler
// is not running yet; once none runs it asks for an early heartbeat.
func (m *Manager) DrainProgress(ctx context.Context) (DrainResult, error) {
	id, err := m.cfg.Store.DrainID()
	if err != nil {
		return DrainResult{}, err
	}
	running, stopped, err := m.chimeDomains(ctx)
	if err != nil {
		return DrainResult{DrainID: id}, err
	}
	if len(running) > 0 {
		m.stopUnsynced(ctx)
	} else {
		m.cfg.Changed()
	}
	return DrainResult{DrainID: id, Running: running, Stopped: stopped}, nil
}

// stopUnsynced stops the chime domains directly while no desired state
// was received (the reconciler is not running).
func (m *Manager) stopUnsynced(ctx context.Context) {
	m.mu.Lock()
	synced := m.synced
	m.mu.Unlock()
	if !synced {
		m.stopAllDirect(ctx)
	}
}

func (m *Manager) stopAllDirect(ctx context.Context) {
	ds, err := m.cfg.Hypervisor.List(ctx)
	if err != nil {
		m.log.Warn("local drain: cannot list libvirt domains", "error", err)
		return
	}
	for _, d := range ds {
		if d.Meta != nil && d.State == hypervisor.StateRunning {
			if err := m.cfg.Hypervisor.Shutdown(ctx, d.UUID, m.cfg.ShutdownGrace); err != nil {
				m.log.Warn("local drain: shutdown failed", "vm", d.Name, "error", err)
			}
		}
	}
}

func (m *Manager) chimeDomains(ctx context.Context) (running, stopped []string, err error) {
	ds, err := m.cfg.Hypervisor.List(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list libvirt domains: %w", err)
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

// MigrateRequest asks for a node-local migration of one VM (UUID) or of
// every running one (All) to the agent at Dest, over Interface's network.
type MigrateRequest struct {
	Interface string
	UUID      string
	All       bool
	Dest      string
}

// MigrateResult is one VM's outcome of a node-local migration.
type MigrateResult struct {
	VMID  string
	Name  string
	OK    bool
	Took  string
	Error string
}

// Interface is what ValidateMigrate needs to know of a network interface.
type Interface struct {
	Up    bool
	Addrs []net.Addr
}

// HostInterface looks an interface up on this host (package net).
func HostInterface(name string) (Interface, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return Interface{}, err
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return Interface{}, err
	}
	return Interface{Up: ifc.Flags&net.FlagUp != 0, Addrs: addrs}, nil
}

// ValidateMigrate checks the request against this host's interfaces: see
// ValidateMigrateWith.
func ValidateMigrate(req MigrateRequest) error { return ValidateMigrateWith(req, HostInterface) }

// ValidateMigrateWith checks the request: the interface exists and the
// destination is an address of one of its subnets, so the migration stream
// really goes over that network. lookup finds the interface. Its errors
// are structs.ErrInvalid, naming the flag.
func ValidateMigrateWith(req MigrateRequest, lookup func(name string) (Interface, error)) error {
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
	ifc, err := lookup(req.Interface)
	if err != nil {
		return structs.Invalid("--interface", "%q: %v", req.Interface, err)
	}
	for _, ad := range ifc.Addrs {
		if n, ok := ad.(*net.IPNet); ok && n.Contains(ip) {
			if !ifc.Up {
				return structs.Invalid("--interface", "%s is down", req.Interface)
			}
			return nil
		}
	}
	return structs.Invalid("--dest", "%s is not on a network of interface %s", req.Dest, req.Interface)
}

// Migrate live-migrates VMs to the agent at req.Dest without the servers
// (node-local migration). The hand-over is recorded first, then the
// destination agent is told (so it keeps the arriving domain), then libvirt
// migrates peer-to-peer over that network. Each success retires the
// generation here (never started here again) and logs the migration for the
// servers.
func (m *Manager) Migrate(ctx context.Context, req MigrateRequest) ([]MigrateResult, error) {
	if err := ValidateMigrateWith(req, m.cfg.Interfaces); err != nil {
		return nil, err
	}
	ds, err := m.cfg.Hypervisor.List(ctx)
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
		out = append(out, m.migrateLocal(ctx, d, req.Dest))
	}
	m.cfg.Changed()
	return out, nil
}

func (m *Manager) migrateLocal(ctx context.Context, d hypervisor.Domain, dest string) MigrateResult {
	log := m.log.Named("migrate").With("vm", d.Name, "dest", dest)
	res := MigrateResult{VMID: d.UUID, Name: d.Name}
	h := store.Handover{VMID: d.UUID, Generation: d.Meta.Generation, ToAddr: dest, FromNode: m.cfg.NodeID}
	if !m.claim(d.UUID, "local") {
		res.Error = errBusy.Error()
		return res
	}
	defer m.release(d.UUID)
	if err := m.cfg.Store.BeginHandover(h); err != nil {
		res.Error = "not migrated: " + err.Error()
		log.Error("cannot record the hand-over: not migrating; the VM keeps running here", "error", err)
		return res
	}
	ad := store.Adoption{VMID: d.UUID, Name: strings.TrimPrefix(d.Name, "chime-"), Generation: d.Meta.Generation, FromNode: m.cfg.NodeID}
	if m.cfg.Prove != nil {
		ad.Proof = m.cfg.Prove(d.UUID, d.Meta.Generation)
	}
	toNode, err := m.cfg.Announcer.AnnounceAdoption(ctx, dest, ad)
	if err != nil {
		res.Error = "destination agent did not accept the adoption: " + err.Error()
		m.abort(h)
		return res
	}
	if toNode == m.cfg.NodeID {
		res.Error = "not migrated: the destination is this node"
		m.abort(h)
		return res
	}
	h.ToNode = toNode
	start := m.cfg.Clock.Now()
	err = m.cfg.Hypervisor.Migrate(ctx, d.UUID, LibvirtURI(dest), "tcp://"+hostForURI(dest))
	h.Outcome = structs.LocalMigrationSucceeded
	if err != nil {
		switch here, lerr := m.domainHere(ctx, d.UUID); {
		case lerr != nil:
			res.Error = err.Error()
			log.Error("node-local migration failed and libvirt cannot be listed; the VM is held until it can be", "error", err, "list_error", lerr)
			return res
		case here != nil:
			res.Error = err.Error()
			log.Error("node-local migration failed; the VM keeps running here", "error", err)
			m.abort(h)
			m.logFailed(h)
			return res
		}
		// Gone from here, but libvirt did not say it arrived: the servers
		// hold the VM until the destination reports it (uniqueness rule 7).
		h.Outcome = structs.LocalMigrationUnknown
		log.Warn("migration call failed but the domain left this node: outcome unknown", "error", err)
	}
	res.OK, res.Took = true, m.cfg.Clock.Now().Sub(start).Round(time.Millisecond).String()
	if err := m.retire(h); err != nil {
		res.Error = "migrated, but the fencing record is not saved yet (held in memory, retrying): " + err.Error()
	}
	log.Info("node-local migration done", "took", res.Took)
	return res
}

// logFailed logs a node-local migration that did not happen, so that the
// servers release the destination's announcement (root cause 5). Only
// for a destination that named itself: the servers need its node id.
func (m *Manager) logFailed(h store.Handover) {
	if h.ToNode == "" {
		return
	}
	h.Outcome = structs.LocalMigrationFailed
	if err := m.cfg.Store.AddMigration(h.LogEntry()); err != nil {
		m.log.Error("cannot log the failed node-local migration; the destination's announcement expires instead", "vm", h.VMID, "error", err)
	}
}

// Adopt records an announced adoption (the destination's side of a
// node-local migration). It only makes this agent keep a domain that
// arrives; the servers decide whether the placement moves (they check the
// generation), and a refused adoption is destroyed. Errors: ErrInvalid for
// a bad announcement, ErrConflict on a locally drained node.
func (m *Manager) Adopt(ad store.Adoption) error {
	if !structs.IsUUID(ad.VMID) || ad.Generation == 0 {
		return structs.Invalid("vm_id", "must be a uuid and generation > 0")
	}
	if m.Drained() {
		return structs.Conflict("", "this node is locally drained: it adopts nothing")
	}
	if ad.FromNode == m.cfg.NodeID {
		return structs.Conflict("from_node", "a node-local migration from this node to itself")
	}
	ad.At, ad.Expired, ad.ToNode = m.cfg.Clock.Now(), false, m.cfg.NodeID
	if err := m.cfg.Store.AddAdoption(ad); err != nil {
		return err
	}
	m.log.Info("node-local migration announced", "vm", ad.Name, "generation", ad.Generation, "from", ad.FromNode)
	m.cfg.Trigger()
	return nil
}
