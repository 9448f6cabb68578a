package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// heartbeatLoop sends heartbeats, but only once the reconciler has settled:
// a returning node must have destroyed its stale copies before the heartbeat
// that may bring it back to normal (uniqueness rule 2).
func (a *Agent) heartbeatLoop(ctx context.Context) {
	log := a.logger.Named("heartbeat")
	select {
	case <-ctx.Done():
		return
	case <-a.rec.Settled():
	}
	log.Info("first reconcile pass done: heartbeats begin")
	for {
		if err := a.HeartbeatOnce(ctx); err != nil && ctx.Err() == nil {
			log.Warn("heartbeat failed", "error", err)
			if RegistrationLost(err) {
				if a.register(ctx) != nil {
					return
				}
			}
		}
		t := a.clock.NewTimer(a.HeartbeatInterval())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-a.heartbeatNow:
			t.Stop()
		}
	}
}

// ErrNotSettled is HeartbeatOnce's answer before the reconciler's first
// pass with every stale copy gone: no heartbeat may bring the node back to
// normal while it may still run a copy rebuilt elsewhere.
var ErrNotSettled = errors.New("no heartbeat yet: stale copies may still run here")

// HeartbeatOnce builds one heartbeat, sends it and handles the answer
// (timing, gossip addresses, refused adoptions, acknowledged local
// migrations). Before the reconciler has settled it sends nothing and
// returns ErrNotSettled. After contact with the servers was lost for a
// heartbeat interval or more (needResync) it first syncs the desired
// state and runs a reconcile pass, so that the heartbeat that may bring
// the node back lists libvirt after the stale copies were destroyed
// (uniqueness rule 9); if that sync fails, the heartbeat carries the fault
// faultNotSynced and cannot make the node normal. An error the servers
// answered with is returned as is (RegistrationLost tells whether to
// register again).
func (a *Agent) HeartbeatOnce(ctx context.Context) error {
	select {
	case <-a.rec.Settled():
	default:
		return ErrNotSettled
	}
	if a.needResync() {
		a.resync(ctx)
	}
	return a.sendHeartbeat(ctx)
}

// resync is the sync and the reconcile pass before the first heartbeat
// after contact was lost.
func (a *Agent) resync(ctx context.Context) {
	log := a.logger.Named("heartbeat")
	if err := a.SyncOnce(ctx); err != nil {
		log.Warn("contact with the servers was lost and the desired state cannot be synced: reporting the node not healthy", "error", err)
		return
	}
	res, err := a.rec.Step(ctx)
	log.Info("contact with the servers back: desired state synced and reconciled before the heartbeat",
		"index", a.desiredIndex(), "stale_failed", res.StaleFailed, "pass_error", err)
}

// HeartbeatInterval is the period of the heartbeats, as the servers last
// set it.
func (a *Agent) HeartbeatInterval() time.Duration { return a.heartbeatInterval() }

// requestHeartbeat asks for the next heartbeat now (after libvirt changed),
// so that the servers' view of the VMs converges quickly. Requests coalesce.
func (a *Agent) requestHeartbeat() {
	select {
	case a.heartbeatNow <- struct{}{}:
	default:
	}
}

// heartbeatDeadline is how long one heartbeat may take to be answered:
// its interval, and at least minHeartbeatDeadline.
func heartbeatDeadline(interval time.Duration) time.Duration {
	return max(interval, minHeartbeatDeadline)
}

// minHeartbeatDeadline keeps fast timings' heartbeats (an interval of
// 1 s or less) from timing out on a loaded server.
const minHeartbeatDeadline = 2 * time.Second

// ReasonDiskLocked is the reason the heartbeat reports for a stopped VM
// whose start libvirt refuses because a disk is locked by another qemu
// (hypervisor.ErrDiskLocked): on shared storage, the disk runs elsewhere.
const ReasonDiskLocked = "disk-locked"

// BuildHeartbeat assembles a heartbeat from libvirt's state and the local
// state; it returns the sequence of the last reported local migration. It
// fails when the local state cannot be read: a heartbeat must not claim
// less than the agent recorded (a drain id, an adoption, a migration).
func (a *Agent) BuildHeartbeat(ctx context.Context) (api.HeartbeatRequest, uint64, error) {
	draining := a.ops.Drained()
	hb := api.HeartbeatRequest{NodeID: a.nodeID, DesiredIndex: a.desiredIndex(), VMs: []structs.VMObservation{}}
	if draining {
		id, err := a.store.DrainID()
		if err != nil {
			return hb, 0, fmt.Errorf("read the local drain id: %w", err)
		}
		hb.LocalDrainID = id
	}
	migratingBefore, err := a.ops.Migrating()
	if err != nil {
		return hb, 0, fmt.Errorf("read the hand-overs in flight: %w", err)
	}
	domains, err := a.hv.List(ctx)
	migratingAfter, merr := a.ops.Migrating()
	if merr != nil {
		return hb, 0, fmt.Errorf("read the hand-overs in flight: %w", merr)
	}
	if err != nil || !a.hv.Connected() {
		hb.Faults = append(hb.Faults, faultLibvirt)
		hb.VMsUnknown = err != nil
	}
	hb.Faults = append(hb.Faults, a.health.Faults()...)
	hb.Faults = append(hb.Faults, a.isolationFaults()...)
	if a.needResync() {
		hb.Faults = append(hb.Faults, faultNotSynced)
	}
	for i, f := range hb.Faults { // the servers refuse longer ones
		hb.Faults[i] = api.Truncate(f, api.MaxFaultLen)
	}
	refused := a.rec.StartRefusals()
	for _, d := range domains {
		if d.Meta == nil {
			continue
		}
		reason := d.Reason
		if _, ok := refused[d.UUID]; ok && d.State != hypervisor.StateRunning {
			// libvirt says only "failed"; the servers show this instead
			// (`chime vm show`: Observed stopped (disk-locked)).
			reason = ReasonDiskLocked
		}
		id := strings.ToLower(d.UUID)
		hb.VMs = append(hb.VMs, structs.VMObservation{VMID: d.UUID, State: observedState(d.State), Reason: api.Truncate(reason, api.MaxReasonLen), Generation: d.Meta.Generation,
			Migrating: migratingBefore[id] || migratingAfter[id]})
	}
	// In VM id order whatever order libvirt listed the domains in, so that
	// the same state gives the same heartbeat.
	sortObservations(hb.VMs)
	if hb.Adopted, hb.Announced, err = a.adoptedObservations(domains); err != nil {
		return hb, 0, err
	}
	if !hb.VMsUnknown {
		// Only a listing proves a domain did not arrive.
		here := map[string]bool{}
		for _, d := range domains {
			here[strings.ToLower(d.UUID)] = true
		}
		if hb.ExpiredAdoptions, err = a.ops.ExpireAdoptions(here); err != nil {
			return hb, 0, err
		}
	}
	sortObservations(hb.Adopted)
	if draining {
		// The local drain is done only once this very listing shows every
		// chime domain stopped (uniqueness rule 6); until then it is
		// draining, and the servers take it as no evidence.
		hb.LocalDrainState = localDrainState(hb.VMsUnknown, domains)
		hb.LocalDrained = hb.LocalDrainState == structs.LocalDrainDone
	}
	migs, last, err := a.store.PendingMigrations()
	if err != nil {
		return hb, 0, err
	}
	hb.Migrations = migs
	for _, c := range a.rec.Destroyed() {
		hb.StaleDestroyed = append(hb.StaleDestroyed, structs.VMObservation{VMID: c.VMID, State: structs.StateRunning, Reason: "destroyed", Generation: c.Generation})
	}
	return hb, last, nil
}

// sendHeartbeat builds, sends and handles one heartbeat; heartbeats are
// sent one at a time (the loop's and the one an adoption announcement
// sends), so that one built after a record changed is applied after one
// built before. Waiting for the one in flight ends with ctx.
func (a *Agent) sendHeartbeat(ctx context.Context) error {
	select {
	case a.heartbeatSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("wait for the heartbeat in flight: %w", ctx.Err())
	}
	defer func() { <-a.heartbeatSem }()
	hb, _, err := a.BuildHeartbeat(ctx)
	if err != nil {
		return err
	}
	sent := a.clock.Now()
	// A heartbeat reports libvirt as it was when it was built: one that
	// has not arrived within an interval is given up (the next one is
	// due), and the client drops it with its connection
	// (api.Client.DiscardUnsentOnClose) rather than let a cut network's
	// retransmissions deliver it once the network is back, reporting VMs
	// migrated away meanwhile as running here (a false uniqueness
	// conflict, seen in the lab's scenario 4).
	hctx, cancel := context.WithCancel(ctx)
	deadline := a.clock.AfterFunc(heartbeatDeadline(a.HeartbeatInterval()), cancel)
	resp, err := a.servers.Heartbeat(hctx, hb)
	deadline.Stop()
	cancel()
	a.noteContact(err)
	if err != nil {
		return err
	}
	a.noteAcked(sent)
	a.setTiming(resp.Timing)
	a.setGossipAddrs(resp.GossipAddrs)
	a.ops.RejectAdoptions(resp.RejectedAdoptions)
	a.rec.AckDestroyed(len(hb.StaleDestroyed))
	a.ops.DropAdoptions(resp.DroppedAdoptions)
	// A migration log entry goes only once the servers say they applied
	// it (uniqueness rule 7); an answer that names none deletes none.
	if err := a.store.AckMigrationsApplied(resp.AppliedMigrations); err != nil {
		return fmt.Errorf("ack local migrations: %w", err)
	}
	a.logger.Named("heartbeat").Debug("heartbeat sent", "vms", len(hb.VMs), "faults", len(hb.Faults))
	a.syncAfterIsolation(ctx)
	return nil
}

// adoptedObservations are the announced adoptions whose domain is here,
// and (announced) those whose domain has not arrived and that have not
// expired, in VM id order.
func (a *Agent) adoptedObservations(domains []hypervisor.Domain) (adopted []structs.VMObservation, announced []structs.AdoptionRef, err error) {
	ads, err := a.store.Adoptions()
	if err != nil {
		return nil, nil, err
	}
	arrived := map[string]bool{}
	for _, d := range domains {
		ad, ok := ads[strings.ToLower(d.UUID)]
		if !ok || d.Meta == nil || d.Meta.Generation != ad.Generation {
			continue
		}
		arrived[ad.VMID] = true
		adopted = append(adopted, structs.VMObservation{VMID: ad.VMID, State: observedState(d.State), Reason: api.Truncate(d.Reason, api.MaxReasonLen), Generation: ad.Generation, Proof: ad.Proof})
	}
	for _, id := range slices.Sorted(maps.Keys(ads)) {
		if ad := ads[id]; !arrived[ad.VMID] && !ad.Expired {
			announced = append(announced, structs.AdoptionRef{VMID: ad.VMID, Generation: ad.Generation})
		}
	}
	return adopted, announced, nil
}

func sortObservations(obs []structs.VMObservation) {
	slices.SortFunc(obs, func(x, y structs.VMObservation) int { return strings.Compare(x.VMID, y.VMID) })
}

// observedState maps a libvirt state onto the API's observation states. A
// domain in a transitional state may still have a qemu process: it counts
// as running, so the servers never believe a VM gone while it is not.
// localDrainState is the state of a local drain in progress given one
// libvirt listing: drained when it was listed and no chime domain runs.
func localDrainState(unlisted bool, domains []hypervisor.Domain) string {
	if unlisted {
		return structs.LocalDraining
	}
	for _, d := range domains {
		if d.Meta != nil && observedState(d.State) == structs.StateRunning {
			return structs.LocalDraining
		}
	}
	return structs.LocalDrainDone
}

func observedState(s string) string {
	switch s {
	case hypervisor.StateStopped:
		return structs.StateStopped
	case hypervisor.StateCrashed:
		return structs.StateCrashed
	}
	return structs.StateRunning
}

// syncAfterIsolation ends an isolation whose lease an acknowledged
// heartbeat renewed: only a desired-state sync that began after the
// acknowledgement says which VMs are still placed here (the servers may
// have restarted them elsewhere meanwhile).
func (a *Agent) syncAfterIsolation(ctx context.Context) {
	a.mu.Lock()
	pending := a.isolatedUntilSync
	a.mu.Unlock()
	if !pending {
		return
	}
	began := a.clock.Now()
	if err := a.SyncOnce(ctx); err != nil {
		a.logger.Named("isolation").Warn("heartbeat acknowledged but the desired state cannot be synced: staying isolated", "error", err)
		return
	}
	a.endIsolation(began)
}
