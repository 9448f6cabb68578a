package heartbeat

import (
	"slices"
	"sort"

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
	Migrations      []structs.LocalMigration // node-local migrations sent from the node
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
func buildDelta(st State, n *structs.Node, r Report) (*fsm.Heartbeat, error) {
	d := &fsm.Heartbeat{NodeID: n.ID}
	adopting := map[string]bool{}
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
		// A claim for a VM that is gone is sent all the same: the FSM
		// refuses it, and the agent is told to destroy its copy.
		d.Adoptions = append(d.Adoptions, fsm.Adoption{VMID: o.VMID, Generation: o.Generation})
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
		case adopting[o.VMID]:
			// Judged by the FSM after the adoption in the same command
			// moved the VM here.
			d.Observations = append(d.Observations, o)
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
	d.LocalMigrations = r.Migrations

	faults := append([]string(nil), r.Faults...)
	sort.Strings(faults)
	if want := stateFromHeartbeat(faults); n.MonitorState != want || !slices.Equal(n.Faults, faults) {
		reason := "heartbeat received"
		if want == structs.MonitorError {
			reason = "agent reports faults"
		}
		d.Monitor = &fsm.MonitorTransition{State: want, Faults: faults, Reason: reason}
	}

	if len(d.Adoptions) == 0 && len(d.Observations) == 0 && d.LocalDrained == nil && d.LocalDrainID == nil && d.LocalDrainState == nil &&
		d.DrainAcked == nil && len(d.LocalMigrations) == 0 && d.Monitor == nil && len(d.Migrations) == 0 {
		return nil, nil
	}
	return d, nil
}

// observationChanged reports whether a current observation differs from
// what is recorded.
func observationChanged(prev *structs.Observation, nodeID string, o structs.VMObservation) bool {
	return prev == nil || prev.NodeID != nodeID || prev.State != o.State || prev.Reason != o.Reason || prev.Generation != o.Generation
}
