package heartbeat

import (
	"slices"
	"sort"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// Report is one heartbeat as the agent sent it, validated by the endpoint.
type Report struct {
	Faults       []string                // the agent's health faults
	VMs          []structs.VMObservation // every chime domain on the node
	VMsUnknown   bool                    // libvirt could not be listed: VMs says nothing
	LocalDrained bool                    // the agent reports its local drain done (`chime agent drain`): a claim, judged here
	LocalDrainID string                  // id of the local drain
	// LocalDrainState is draining or drained while a local drain is on
	// (empty from agents that predate it: LocalDrained alone then).
	LocalDrainState string
	DesiredIndex    uint64                   // the desired-state index the agent had applied
	Adopted         []structs.VMObservation  // domains that arrived by node-local migration
	Migrations      []structs.LocalMigration // node-local migrations sent from the node (its migration log)
	// Announced are node-local migrations announced to the node whose
	// domain has not arrived; ExpiredAdoptions those its agent dropped
	// unarrived after their bound.
	Announced        []structs.AdoptionRef
	ExpiredAdoptions []structs.AdoptionRef
	// StaleDestroyed are the running stale copies the agent destroyed
	// since its last heartbeat that got through.
	StaleDestroyed []structs.VMObservation
}

// stateFromHeartbeat is the monitor state a heartbeat with these faults means.
func stateFromHeartbeat(faults []string) string {
	if len(faults) > 0 {
		return structs.MonitorError
	}
	return structs.MonitorNormal
}

// buildDelta compares a heartbeat of node n with the state and returns what
// differs, as one node.heartbeat payload, or nil when nothing does. The FSM
// judges every item again when the command applies (the state may have
// moved meanwhile); this is the filter that keeps unchanged heartbeats out
// of the log.
func buildDelta(st State, n *structs.Node, r Report, now time.Time) (*fsm.Heartbeat, error) {
	// Authorized: every item is judged against n (issue 12); an adoption
	// the state does not prove (fsm.AdoptionProven) holds the VM instead
	// of moving it.
	d := &fsm.Heartbeat{NodeID: n.ID, Authorized: true}
	source := func(id string) (bool, string) {
		src, err := st.Node(id)
		return err == nil && src != nil && src.Fenced, st.NodeSecretHash(id)
	}
	adopting := map[string]bool{}
	held := map[string]bool{} // unproven adoptions: neither observed here nor stale copies
	anyRunning := false
	for _, o := range r.Adopted {
		if o.State == structs.StateRunning {
			anyRunning = true
		}
		vm, err := st.VM(o.VMID)
		if err != nil && !structs.IsNotFound(err) {
			return nil, err
		}
		if vm != nil && vm.AdoptedBy(n.ID, o.Generation) {
			continue
		}
		if vm != nil && vm.NodeID != "" && vm.Generation == o.Generation && !fsm.AdoptionProven(vm, n.ID, o.Generation, o.Proof, source) {
			held[o.VMID] = true
			if fsm.HeldFor(vm, n.ID, o.Generation) {
				continue // held already: nothing to write
			}
		}
		// A claim for a VM that is gone is sent all the same: the FSM
		// refuses it, and the agent is told to destroy its copy.
		d.Adoptions = append(d.Adoptions, fsm.Adoption{VMID: o.VMID, Generation: o.Generation, Proof: o.Proof})
		adopting[o.VMID] = true
	}

	listed := map[string]bool{}
	for _, o := range r.VMs {
		listed[o.VMID] = true
		if o.State == structs.StateRunning {
			anyRunning = true
		}
		vm, err := st.VM(o.VMID)
		if structs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if vm.MigrationSettledBy(n.ID, o, r.DesiredIndex) != "" {
			// Proof of where a migrating VM runs (uniqueness rule 8).
			d.Migrations = append(d.Migrations, fsm.MigrationEvidence{VMObservation: o, DesiredIndex: r.DesiredIndex})
		}
		switch {
		case held[o.VMID]:
			// An unproven adoption: held for the node, not observed here.
		case adopting[o.VMID]:
			// Judged by the FSM after the adoption in the same command
			// moved the VM here.
			d.Observations = append(d.Observations, o)
		case fsm.HeldFor(vm, n.ID, o.Generation):
			// An announced adoption that has not moved the VM here.
		case vm.IncomingHere(n.ID):
			// The incoming copy of a live migration in flight.
		case !vm.ObservationCurrent(n.ID, o.Generation):
			if o.State == structs.StateRunning {
				d.Observations = append(d.Observations, o) // recorded as a stale-copy event
			}
		case observationChanged(vm.Observed, n.ID, o):
			d.Observations = append(d.Observations, o)
		}
	}
	// A held VM (uniqueness rule 8) that neither end of its migration runs
	// any more runs nowhere: each end's absence is evidence only together
	// (MigrationSettledBy), so both are sent.
	if !r.VMsUnknown {
		held, err := heldAbsent(st, n.ID, r, listed)
		if err != nil {
			return nil, err
		}
		d.Migrations = append(d.Migrations, held...)
	}
	// A placed VM the agent no longer lists is gone from libvirt: stopped
	// (unless libvirt could not be listed at all).
	if !r.VMsUnknown {
		placed, _, err := st.VMsOnNode(n.ID)
		if err != nil {
			return nil, err
		}
		for _, vm := range placed {
			if !listed[vm.ID] && vm.Migration == nil && vm.Observed != nil && vm.Observed.NodeID == n.ID && vm.Observed.State != structs.StateStopped {
				d.Observations = append(d.Observations, structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "undefined", Generation: vm.Generation})
			}
		}
	}

	// Drain flags are evidence (uniqueness rule 6): this heartbeat proves
	// nothing runs only when libvirt was listed and no domain runs.
	stopped := !anyRunning && !r.VMsUnknown
	localState := r.LocalDrainState
	if localState == "" && r.LocalDrained {
		localState = structs.LocalDrainDone // an agent that predates the state
	}
	if localState == structs.LocalDrainDone && !stopped {
		localState = structs.LocalDraining
	}
	if !r.VMsUnknown || anyRunning { // an unlistable libvirt changes nothing
		if localDrained := localState == structs.LocalDrainDone; localDrained != n.LocalDrained {
			d.LocalDrained = &localDrained
		}
		if localState != n.LocalDrainState {
			d.LocalDrainState = &localState
		}
	}
	if r.LocalDrainID != "" && r.LocalDrainID != n.LocalDrainID {
		v := r.LocalDrainID
		d.LocalDrainID = &v
	}
	acked := n.ManagementState == structs.NodeDrained && stopped && r.DesiredIndex >= n.DrainIndex
	switch {
	case acked && !n.DrainAcked:
		d.DrainAcked = &acked
	case anyRunning && n.DrainAcked:
		no := false
		d.DrainAcked = &no
	}
	if d.LocalDrained != nil || d.LocalDrainState != nil || d.DrainAcked != nil {
		d.Evidence = &fsm.DrainEvidence{DesiredIndex: r.DesiredIndex, Running: anyRunning, Unknown: r.VMsUnknown}
	}
	for _, m := range r.Migrations {
		if m.Outcome == "" {
			d.LocalMigrations = append(d.LocalMigrations, m) // an agent that predates outcomes: an event only
		} else {
			d.LocalMoves = append(d.LocalMoves, m)
		}
	}
	for _, c := range r.Announced {
		vm, err := st.VM(c.VMID)
		if structs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if nl := vm.NodeLocal; vm.NodeID == "" || vm.NodeID == n.ID || vm.Generation != c.Generation ||
			(nl != nil && nl.To == n.ID && nl.Generation == c.Generation) {
			continue // over (see droppedAdoptions), or already held
		}
		d.Announced = append(d.Announced, fsm.Adoption{VMID: c.VMID, Generation: c.Generation})
	}
	for _, c := range r.ExpiredAdoptions {
		vm, err := st.VM(c.VMID)
		if structs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if nl := vm.NodeLocal; nl != nil && nl.To == n.ID && nl.Generation == c.Generation {
			d.ExpiredAdoptions = append(d.ExpiredAdoptions, fsm.Adoption{VMID: c.VMID, Generation: c.Generation})
		}
	}

	// The copies the heartbeat lists, judged as the FSM will judge them
	// (uniqueness rule 9): which are conflicts, whether the node may be
	// normal, whether an unreachable node may return.
	ev := copyEvidence(r)
	judged, err := fsm.WithoutHeld(ev, n.ID, func(id string) (*structs.VM, error) {
		vm, err := st.VM(id)
		if structs.IsNotFound(err) {
			return nil, nil
		}
		return vm, err
	})
	if err != nil {
		return nil, err
	}
	stale, err := fsm.StaleCopies(n, judged, func(id string) (*structs.VM, error) {
		if adopting[id] || held[id] {
			return nil, nil // the FSM adopts it first: judged there
		}
		vm, err := st.VM(id)
		if structs.IsNotFound(err) {
			return nil, nil
		}
		return vm, err
	}, now)
	if err != nil {
		return nil, err
	}
	conflictsChanged := !fsm.SameCopies(n.StaleCopies, stale)
	var running []structs.StaleCopy
	for _, s := range stale {
		if s.Running() {
			running = append(running, s)
		}
	}

	faults := append([]string(nil), r.Faults...)
	if len(running) > 0 {
		faults = append(faults, structs.FaultStaleCopy)
	}
	sort.Strings(faults)
	refusalChanged := false
	if n.MonitorState == structs.MonitorUnreachable {
		refusal, err := returnRefusal(st, n, judged, running)
		if err != nil {
			return nil, err
		}
		if refusal == "" {
			d.Monitor = &fsm.MonitorTransition{State: stateFromHeartbeat(faults), Faults: faults, Reason: heartbeatReason(faults)}
		} else {
			refusalChanged = refusal != n.ReturnRefused
			if refusalChanged {
				// The FSM records the refusal; the transition it asks for is
				// refused there again, against the state it applies to.
				d.Monitor = &fsm.MonitorTransition{State: stateFromHeartbeat(faults), Faults: faults, Reason: heartbeatReason(faults)}
			}
		}
	} else if want := stateFromHeartbeat(faults); n.MonitorState != want || !slices.Equal(n.Faults, faults) {
		d.Monitor = &fsm.MonitorTransition{State: want, Faults: faults, Reason: heartbeatReason(faults)}
	}

	if len(d.Adoptions) == 0 && len(d.Observations) == 0 && d.LocalDrained == nil && d.LocalDrainID == nil && d.LocalDrainState == nil &&
		d.DrainAcked == nil && len(d.LocalMigrations) == 0 && len(d.LocalMoves) == 0 && len(d.Announced) == 0 &&
		len(d.ExpiredAdoptions) == 0 && d.Monitor == nil && !conflictsChanged && !refusalChanged && len(d.Migrations) == 0 {
		return nil, nil
	}
	d.Copies = &ev
	return d, nil
}

// heartbeatReason is the reason of the monitor transition a heartbeat
// with these faults asks for.
func heartbeatReason(faults []string) string {
	switch {
	case slices.Contains(faults, structs.FaultStaleCopy):
		return "heartbeat lists a running copy of a VM placed elsewhere"
	case len(faults) > 0:
		return "agent reports faults"
	}
	return "heartbeat received"
}

// copyEvidence is what a heartbeat lists about the copies on its node.
func copyEvidence(r Report) fsm.CopyEvidence {
	ev := fsm.CopyEvidence{DesiredIndex: r.DesiredIndex, Unknown: r.VMsUnknown}
	for _, o := range r.VMs {
		if o.State == structs.StateRunning {
			ev.Running = append(ev.Running, fsm.Copy{VMID: o.VMID, Generation: o.Generation})
		}
	}
	for _, o := range r.StaleDestroyed {
		ev.Destroyed = append(ev.Destroyed, fsm.Copy{VMID: o.VMID, Generation: o.Generation})
	}
	return ev
}

// returnRefusal is fsm.ReturnRefusal over the state as the monitor reads it.
func returnRefusal(st State, n *structs.Node, ev fsm.CopyEvidence, running []structs.StaleCopy) (string, error) {
	var vmName, placed string
	if len(running) > 0 {
		s := running[0]
		vmName, placed = s.VMID, s.PlacedOn
		if vm, err := st.VM(s.VMID); err == nil {
			vmName = vm.Name
		}
		if s.PlacedOn == "" {
			placed = "none"
		} else if pn, err := st.Node(s.PlacedOn); err == nil {
			placed = pn.Name
		}
	}
	return fsm.ReturnRefusal(st.NodeIndex(n.ID), ev, running, vmName, placed), nil
}

// observationChanged reports whether a current observation differs from
// what is recorded.
func observationChanged(prev *structs.Observation, nodeID string, o structs.VMObservation) bool {
	return prev == nil || prev.NodeID != nodeID || prev.State != o.State || prev.Reason != o.Reason || prev.Generation != o.Generation
}

// droppedAdoptions are the announced adoptions of node n that are over:
// the VM is gone, its placement moved on (placed here anew, or elsewhere
// at another generation), or its source reported the migration failed.
// The agent drops their records: an announcement that never arrived holds
// nothing once the migration's outcome is known. An announcement the
// servers already placed here (adopted) is forgotten by the agent through
// its desired state instead.
func droppedAdoptions(st State, n *structs.Node, announced []structs.AdoptionRef) ([]string, error) {
	var out []string
	for _, c := range announced {
		vm, err := st.VM(c.VMID)
		if structs.IsNotFound(err) {
			out = append(out, c.VMID)
			continue
		}
		if err != nil {
			return nil, err
		}
		nl := vm.NodeLocal
		switch {
		case vm.AdoptedBy(n.ID, c.Generation):
		case vm.NodeID == n.ID, vm.NodeID == "", vm.Generation != c.Generation:
			out = append(out, c.VMID)
		case nl != nil && nl.To == n.ID && nl.Generation == c.Generation && nl.Outcome == structs.LocalMigrationFailed:
			out = append(out, c.VMID)
		}
	}
	return out, nil
}

// heldAbsent is the absence evidence of the held VMs migrating from or to
// node n that its heartbeat r does not list (listed: the VMs it lists).
// One listed but not running is judged with the other observations.
func heldAbsent(st State, nodeID string, r Report, listed map[string]bool) ([]fsm.MigrationEvidence, error) {
	all, err := st.HeldVMs() // the held ones only: no read of every VM per heartbeat
	if err != nil {
		return nil, err
	}
	var out []fsm.MigrationEvidence
	for _, vm := range all {
		if !vm.Held() || listed[vm.ID] || (vm.Migration.From != nodeID && vm.Migration.To != nodeID) {
			continue
		}
		o := structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "undefined", Generation: vm.Migration.Generation}
		if vm.MigrationSettledBy(nodeID, o, r.DesiredIndex) != "" {
			out = append(out, fsm.MigrationEvidence{VMObservation: o, DesiredIndex: r.DesiredIndex})
		}
	}
	return out, nil
}
