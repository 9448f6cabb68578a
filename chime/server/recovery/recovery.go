// Package recovery is automatic HA, the leader's duty that rebuilds ha
// VMs of a dead node elsewhere without an operator (DESIGN.md, "Isolation
// and fencing"; docs/ha.md). A VM is restarted elsewhere only when its
// node is unreachable and known to run nothing, by one of three pieces of
// evidence, each named in the ha.restarted event:
//
//   - fence: the fence command (or `chime node fence`) succeeded, and no
//     heartbeat arrived since (Node.FencedAt, and the node held silent);
//   - lease: the node runs with isolation response stop and has been
//     silent, on this leader's clock and since its takeover at the
//     earliest, for structs.LeaseDeadline(lease, margin), and its agent's
//     stop bound fits in the margin (structs.Node.LeaseCounts);
//   - drain: the node is drained and its agent acknowledged it (or
//     reported a local drain done), and no VM is recorded running there.
//
// Without evidence, and with a fence command configured, the duty runs it
// (retries with back-off, outcome in the event log). VMs restart in
// priority order (high, medium, low), each placement a compare-and-set on
// the VM's generation, with a retry limit and back-off per VM.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// Proposer applies a command through Raft (the server) or straight to an
// FSM (fsm.Direct, in tests). A refusal comes back as the error.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state the duty reads (*fsm.FSM).
type State interface {
	Nodes() ([]structs.Node, error)
	// NodesView lists every node from the FSM's derived view: a copy, no
	// bbolt read and no decoding. A pass scans it for unreachable nodes,
	// then reads each of those from the state (Node) for its decision.
	NodesView() []structs.Node
	Node(id string) (*structs.Node, error)
	VMsOnNode(nodeID string) ([]structs.VM, uint64, error)
	// HeldVMs lists the VMs whose live-migration outcome is unknown, from
	// the FSM's index of them (no decode of every VM).
	HeldVMs() ([]structs.VM, error)
}

// Silence is the heartbeat monitor's memory of arrivals
// (*heartbeat.Monitor): how long a node has been silent on this leader,
// and a hold that refuses its heartbeats while a recovery that relies on
// that silence proposes.
type Silence interface {
	Silence(nodeID string) time.Duration
	HoldSilent(nodeID string, min time.Duration) (release func(), ok bool)
}

// Placer is the placement lock and the scheduler (*placement.Placer).
type Placer interface {
	Decide(fn func() error) error
	Place(vm structs.VM, exclude []string) (string, error)
	Kick()
}

// Fencer runs the fence command for a node (power it off). It returns the
// command's output; an error means the node is not known fenced.
type Fencer interface {
	Fence(ctx context.Context, n structs.Node) (string, error)
}

// Brake says whether automatic recovery is armed. The mass-failure brake
// and `chime operator ha disarm` plug in here; nil is always armed.
type Brake interface {
	HAArmed() bool
}

// Clock is where the duty reads the time (the server's one clock).
type Clock interface{ Now() time.Time }

// Config is what a Recoverer needs.
type Config struct {
	Proposer Proposer
	State    State
	Silence  Silence
	Placer   Placer
	Fencer   Fencer // nil: no fence command configured
	Brake    Brake  // nil: always armed
	Clock    Clock
	Logger   hclog.Logger // parent logger; logs as <parent>.recovery

	// MaxRestarts bounds the restart attempts of one VM by this leader
	// (Proxmox's max_relocate): a VM whose placement fails (no node
	// fits) this often is given up (ha.gave_up) until its node changes.
	// 0: DefaultMaxRestarts.
	MaxRestarts int
	// MaxFenceAttempts bounds the fence command's attempts per node and
	// episode (the node unreachable): 0 is DefaultMaxFenceAttempts.
	MaxFenceAttempts int
	// LeaseMargin is the margin over an isolation lease
	// (--isolation-lease-margin): 0 is structs.DefaultLeaseMargin.
	LeaseMargin time.Duration
}

// Defaults.
const (
	DefaultMaxRestarts      = 5
	DefaultMaxFenceAttempts = 5
	// StepEvery is the period of the duty in production (and in the
	// simulator), besides the wake-up after every change.
	StepEvery = time.Second
	// backoffBase and backoffMax bound the waits between attempts.
	backoffBase = 2 * time.Second
	backoffMax  = time.Minute
)

// Recoverer is the duty. The restart attempts of each VM are replicated
// (fsm.CmdHARestartFailed, structs.VM.HARestarts): a new leader goes on
// counting and waits the whole back-off from its takeover. The fence
// attempts and the lease clock live on this leader only: a new leader
// fences again, and counts silence from its takeover.
type Recoverer struct {
	propose Proposer
	state   State
	silence Silence
	placer  Placer
	fencer  Fencer
	brake   Brake
	clock   Clock
	log     hclog.Logger

	maxRestarts, maxFence int
	margin                time.Duration

	mu       sync.Mutex
	restarts map[string]*attempt // vm id → restart attempts
	warned   map[string]uint64   // vm id → generation the lease was said not to cover
	badBound map[string]bool     // node id → its stop bound exceeds the margin (logged)
	fences   map[string]*attempt // node id → fence attempts (this episode)
	wg       sync.WaitGroup      // asynchronous fence attempts (Run)
	async    bool                // fence attempts on their own goroutine (Run)
	kick     chan struct{}       // a fence succeeded: step now (Run)
}

// attempt is the retry state of one VM restart or one node's fence.
type attempt struct {
	count    int
	next     time.Time // no attempt before then
	inFlight bool
	gaveUp   bool
	key      string // what it was about: the VM's node and generation, or the node's episode
}

// New returns a Recoverer; Run (or Step) does the work.
func New(cfg Config) *Recoverer {
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	r := &Recoverer{propose: cfg.Proposer, state: cfg.State, silence: cfg.Silence, placer: cfg.Placer,
		fencer: cfg.Fencer, brake: cfg.Brake, clock: cfg.Clock, log: logger.Named("recovery"),
		maxRestarts: cfg.MaxRestarts, maxFence: cfg.MaxFenceAttempts, margin: cfg.LeaseMargin,
		badBound: map[string]bool{}, restarts: map[string]*attempt{}, warned: map[string]uint64{}, fences: map[string]*attempt{}, kick: make(chan struct{}, 1)}
	if r.maxRestarts <= 0 {
		r.maxRestarts = DefaultMaxRestarts
	}
	if r.maxFence <= 0 {
		r.maxFence = DefaultMaxFenceAttempts
	}
	if r.margin <= 0 {
		r.margin = structs.DefaultLeaseMargin
	}
	return r
}

// armed is the single check of the brake: automatic recovery runs only
// while it is armed.
func (r *Recoverer) armed() bool { return r.brake == nil || r.brake.HAArmed() }

// Run steps the duty every StepEvery until ctx ends (leadership lost);
// fence commands run on their own goroutines. It waits for them before it
// returns. Each term starts with no memory of attempts.
func (r *Recoverer) Run(ctx context.Context) {
	r.mu.Lock()
	r.async = true
	r.restarts, r.fences, r.warned = map[string]*attempt{}, map[string]*attempt{}, map[string]uint64{}
	r.mu.Unlock()
	defer r.wg.Wait()
	t := time.NewTicker(StepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		if err := r.Step(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("recovery pass failed", "error", err)
		}
	}
}

// Step is one pass: for every unreachable node with ha VMs to restart,
// restart them if the node is known fenced, or else run the fence
// command. Without Run, fence commands run inside Step (the simulator).
func (r *Recoverer) Step(ctx context.Context) error {
	if !r.armed() {
		return nil
	}
	// Every second: the scan walks the view's copy (no decoding of every
	// node), and each unreachable node is read again from the state, which
	// is what its decision stands on.
	var errs []error
	for _, n := range r.state.NodesView() {
		if n.MonitorState != structs.MonitorUnreachable {
			r.forgetFence(n.ID)
			continue
		}
		cur, err := r.state.Node(n.ID)
		if structs.IsNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read node %s: %w", n.Name, err))
			continue
		}
		if n = *cur; n.MonitorState != structs.MonitorUnreachable {
			continue
		}
		vms, err := r.toRestart(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		held, err := r.heldMigrations(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(vms) == 0 && len(held) == 0 {
			continue
		}
		ev, hold, lease := r.evidence(n)
		if ev == "" {
			r.fenceIfDue(ctx, n)
			continue
		}
		if len(held) > 0 {
			if lease {
				// The lease says the agent killed what it runs; it says
				// nothing about a hand-over libvirt may have completed
				// meanwhile. Only a fence (or a drain) settles these.
				r.fenceIfDue(ctx, n)
			} else if err := r.settleAll(ctx, n, held, ev, hold); err != nil {
				errs = append(errs, err)
			}
		}
		if len(vms) == 0 {
			continue
		}
		if lease {
			var uncovered []structs.VM
			vms, uncovered = leaseCovers(n, vms)
			if len(uncovered) > 0 {
				// Arrived by live migration and not reported by the node
				// since: its agent may have been dead already (a host
				// booting, libvirtd up before the agent), so the lease
				// says nothing about them. Only a fence does.
				r.warnUncovered(n, uncovered)
				r.fenceIfDue(ctx, n)
			}
			if len(vms) == 0 {
				continue
			}
		}
		if err := r.restartAll(ctx, n, vms, ev, hold); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// toRestart are the node's ha VMs desired running that automatic HA may
// move: not in a live migration, not held by a node-local migration whose
// outcome is unknown, in restart order (priority, then name).
func (r *Recoverer) toRestart(n structs.Node) ([]structs.VM, error) {
	vms, _, err := r.state.VMsOnNode(n.ID)
	if err != nil {
		return nil, fmt.Errorf("read vms on node %s: %w", n.Name, err)
	}
	var out []structs.VM
	for _, vm := range vms {
		if !vm.Spec.HA || vm.DesiredState != structs.DesiredRunning || vm.Migration != nil || vm.HeldByNodeLocal() {
			continue
		}
		out = append(out, vm)
	}
	scheduler.RestartOrder(out) // the failover plan's order (GET /v1/failover)
	return out, nil
}

// heldMigrations are the ha VMs desired running whose ordered live
// migration from or to node n has an unknown outcome (held: started
// nowhere until a host proves where they run). From the index of held
// VMs: the pass runs every second for each unreachable node, and reading
// every VM there was 39 % of the leader's CPU in issue 14's evacuation at
// 10,000 nodes and 30,000 VMs (about 40 ms per node per pass).
func (r *Recoverer) heldMigrations(n structs.Node) ([]structs.VM, error) {
	all, err := r.state.HeldVMs()
	if err != nil {
		return nil, fmt.Errorf("read held vms: %w", err)
	}
	var out []structs.VM
	for _, vm := range all {
		m := vm.Migration
		if !vm.Spec.HA || vm.DesiredState != structs.DesiredRunning || !vm.Held() || (m.From != n.ID && m.To != n.ID) {
			continue
		}
		out = append(out, vm)
	}
	scheduler.RestartOrder(out)
	return out, nil
}

// settleAll settles the held migrations from or to node n, which is known
// to run nothing (ev: a fence or a drain acknowledgement): the VM runs at
// the other end or nowhere, so it is placed there (on the destination
// adopting the migrating generation: its agent keeps the arrived copy or
// starts one; on the source with a new generation adopting it). The
// restart elsewhere, if the other end is unreachable as well, follows from
// that end's own evidence. With the node's heartbeats held off, as the
// restarts.
func (r *Recoverer) settleAll(ctx context.Context, n structs.Node, held []structs.VM, ev string, hold time.Duration) error {
	release, ok := r.holdOff(n.ID, hold)
	if !ok {
		return nil // it spoke meanwhile: no evidence any more
	}
	defer release()
	var errs []error
	settled := false
	for _, vm := range held {
		m := vm.Migration
		where, end := m.To, "source"
		if m.From != n.ID {
			where, end = m.From, "destination"
		}
		reason := fmt.Sprintf("automatic HA: node %s, its %s, is known to run nothing: %s", n.Name, end, ev)
		_, err := r.propose.Propose(ctx, "", fsm.CmdMigrationSettle, fsm.MigrationSettle{VMID: vm.ID, TaskID: m.TaskID,
			Generation: m.Generation, Where: where, Reason: reason})
		switch {
		case err == nil:
			settled = true
			r.log.Info("held live migration settled", "vm", vm.Name, "node", n.Name, "end", end, "placed_on", where, "evidence", ev)
		case errors.Is(err, structs.ErrConflict) || structs.IsNotFound(err):
			// Settled meanwhile (a report, an operator's rebuild).
		default:
			errs = append(errs, fmt.Errorf("settle the live migration of vm %s: %w", vm.Name, err))
		}
	}
	if settled {
		r.placer.Kick()
	}
	return errors.Join(errs...)
}

// leaseCovers splits vms into those the node's isolation lease covers and
// those it does not. The lease promises that the node's agent kills what
// runs there (or that its watchdog resets the host); a qemu that a live
// migration brought to the node after its agent died — a host booting,
// libvirtd up before the agent — is nobody's to kill. So a VM whose
// placement came by live migration (AdoptGeneration set) is covered only
// once the node itself reported it at its current generation (the agent
// redefines an adopted domain with it).
func leaseCovers(n structs.Node, vms []structs.VM) (covered, uncovered []structs.VM) {
	for _, vm := range vms {
		o := vm.Observed
		if vm.AdoptGeneration != 0 && (o == nil || o.NodeID != n.ID || o.Generation < vm.Generation) {
			uncovered = append(uncovered, vm)
			continue
		}
		covered = append(covered, vm)
	}
	return covered, uncovered
}

// evidence says why node n is known to run nothing ("" when it is not),
// how long it must have been silent for that to hold (0: no hold needed),
// and whether it is the isolation lease (which covers only some VMs:
// leaseCovers). Strongest first: the drain acknowledgement, the fence,
// the lease.
func (r *Recoverer) evidence(n structs.Node) (string, time.Duration, bool) {
	if n.ManagementState == structs.NodeDrained && (n.DrainAcked || n.LocalDrained) {
		return "drain acknowledged by the agent (every VM stopped, kept stopped)", 0, false
	}
	if n.LocalDrained {
		return "local drain reported done by the agent (every VM stopped, kept stopped)", 0, false
	}
	now := r.clock.Now()
	if n.Fenced && !n.FencedAt.IsZero() && !n.StateSince.After(n.FencedAt) {
		// Only while no heartbeat arrived since: a node powered on again
		// may have started VMs still placed on it.
		since := now.Sub(n.FencedAt)
		if r.silence.Silence(n.ID) >= since {
			return fmt.Sprintf("fence command succeeded %s ago, no heartbeat since", since.Round(time.Millisecond)), since, false
		}
	}
	if n.IsolationResponse == structs.IsolationStop && n.IsolationLease > 0 {
		if !n.LeaseCounts(r.margin) {
			// The agent may need longer to stop its VMs than the margin
			// allows: its lease proves nothing here (its agent alarms too).
			r.mu.Lock()
			first := !r.badBound[n.ID]
			r.badBound[n.ID] = true
			r.mu.Unlock()
			if first {
				r.log.Error("isolation lease not counted: the agent's stop bound exceeds the servers' margin; only a fence or a drain makes its VMs restart elsewhere",
					"node", n.Name, "stop_bound", n.StopBound().String(), "margin", r.margin.String())
			}
			return "", 0, false
		}
		deadline := structs.LeaseDeadline(n.IsolationLease, r.margin)
		if s := r.silence.Silence(n.ID); s >= deadline {
			return fmt.Sprintf("isolation lease expired (lease %s, margin %s, isolation response stop; silent %s on the leader ≥ %s)",
				n.IsolationLease, r.margin, s.Round(time.Millisecond), deadline), deadline, true
		}
	}
	return "", 0, false
}

// holdOff holds node id's heartbeats off for hold while evidence that
// rests on its silence is acted on (hold 0: the evidence does not rest on
// silence, nothing is held). ok is false when the node spoke meanwhile.
func (r *Recoverer) holdOff(id string, hold time.Duration) (release func(), ok bool) {
	if hold <= 0 {
		return func() {}, true
	}
	return r.silence.HoldSilent(id, hold)
}

// restartAll restarts vms of node n elsewhere, in order, under the
// placement lock and, when the evidence rests on silence, with the node's
// heartbeats held off.
func (r *Recoverer) restartAll(ctx context.Context, n structs.Node, vms []structs.VM, ev string, hold time.Duration) error {
	release, ok := r.holdOff(n.ID, hold)
	if !ok {
		return nil // it spoke meanwhile: no evidence any more
	}
	defer release()
	var errs []error
	moved := false
	err := r.placer.Decide(func() error {
		for _, vm := range vms {
			ok, err := r.restartOne(ctx, n, vm, ev)
			if err != nil {
				errs = append(errs, err)
			}
			moved = moved || ok
		}
		return nil
	})
	if moved {
		r.placer.Kick()
	}
	return errors.Join(append(errs, err)...)
}

// restartOne places vm elsewhere (a compare-and-set on its generation)
// and records ha.restarted with the evidence. It reports whether the VM
// moved.
func (r *Recoverer) restartOne(ctx context.Context, n structs.Node, vm structs.VM, ev string) (bool, error) {
	now := r.clock.Now()
	key := fmt.Sprintf("%s/%d", n.ID, vm.Generation)
	r.mu.Lock()
	at := r.restarts[vm.ID]
	if at == nil || at.key != key {
		at = &attempt{key: key}
		if h := vm.HARestarts; h != nil && h.NodeID == n.ID && h.Generation == vm.Generation {
			// Replicated by an earlier leader (or this one before): go on
			// counting, and wait the whole back-off again from now (its
			// time of the last failure is another server's clock).
			at.count, at.gaveUp = h.Count, h.GaveUp
			if h.Count > 0 {
				at.next = now.Add(backoff(h.Count))
			}
		}
		r.restarts[vm.ID] = at
	}
	if at.gaveUp || now.Before(at.next) {
		r.mu.Unlock()
		return false, nil
	}
	at.count++
	count := at.count
	r.mu.Unlock()

	to, err := r.placer.Place(vm, []string{n.ID})
	if err != nil || to == "" {
		why := "no node fits"
		if err != nil {
			why = err.Error()
		}
		return false, r.failed(ctx, vm, n, at, count, why)
	}
	toName := to
	if tn, err := r.state.Node(to); err == nil {
		toName = tn.Name
	}
	prio := vm.Spec.Priority
	if prio == "" {
		prio = structs.PriorityMedium
	}
	msg := fmt.Sprintf("vm %s (priority %s) restarted on node %s, away from unreachable node %s (attempt %d); evidence: %s",
		vm.Name, prio, toName, n.Name, count, ev)
	reason := fmt.Sprintf("ha restart from unreachable node %s: %s", n.Name, ev)
	// The ha.restarted event rides in the placement's own entry: nobody
	// sees the VM moved without the evidence that made it safe.
	res, err := r.propose.Propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: to, IfGeneration: vm.Generation, Reason: reason,
		Then: &structs.Event{Kind: EventRestarted, NodeID: n.ID, VMID: vm.ID, Message: msg}})
	if err != nil {
		return false, r.failed(ctx, vm, n, at, count, err.Error())
	}
	r.mu.Lock()
	delete(r.restarts, vm.ID)
	r.mu.Unlock()
	var idx uint64
	if res != nil {
		idx = res.Index
	}
	r.log.Info("ha vm restarted elsewhere", "vm", vm.Name, "from", n.Name, "to", toName, "evidence", ev, "index", idx)
	return true, nil
}

// failed notes a failed restart attempt: back-off, and after the limit an
// ha.gave_up event.
func (r *Recoverer) failed(ctx context.Context, vm structs.VM, n structs.Node, at *attempt, count int, why string) error {
	now := r.clock.Now()
	r.mu.Lock()
	at.next = now.Add(backoff(count))
	give := count >= r.maxRestarts
	at.gaveUp = give
	r.mu.Unlock()
	r.log.Warn("ha restart failed", "vm", vm.Name, "node", n.Name, "attempt", count, "error", why, "retry_in", backoff(count).String())
	// Replicated, so that a new leader goes on counting (the record is
	// refused once the placement moved on: nothing to count then).
	if _, err := r.propose.Propose(ctx, "", fsm.CmdHARestartFailed, fsm.HARestartFailed{VMID: vm.ID, NodeID: n.ID,
		Generation: vm.Generation, Count: count, GaveUp: give, Error: why, Retry: backoff(count).String()}); err != nil && !errors.Is(err, structs.ErrConflict) && !structs.IsNotFound(err) {
		return fmt.Errorf("record the failed restart of vm %s: %w", vm.Name, err)
	}
	if !give {
		return nil
	}
	msg := fmt.Sprintf("vm %s: automatic restart away from node %s given up after %d attempts (last: %s); it restarts when its node returns, or by `chime node drain` + `chime node rebuild`",
		vm.Name, n.Name, count, why)
	if _, err := r.propose.Propose(ctx, "", fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: EventGaveUp, NodeID: n.ID, VMID: vm.ID, Message: msg}}); err != nil {
		return fmt.Errorf("record ha.gave_up of vm %s: %w", vm.Name, err)
	}
	return nil
}

// backoff is the wait after the count-th failed attempt: 2 s doubling,
// at most a minute.
func backoff(count int) time.Duration {
	return min(backoffBase<<min(max(count-1, 0), 6), backoffMax)
}

// Event kinds the duty records.
const (
	EventRestarted    = "ha.restarted"
	EventGaveUp       = "ha.gave_up"
	EventFenceOK      = "fence.succeeded"
	EventFenceFailed  = "fence.failed"
	EventFenceGaveUp  = "fence.gave_up"
	fenceOutputMaxLen = 512
)

// warnUncovered logs, once per VM and placement, that the lease does not
// cover it.
func (r *Recoverer) warnUncovered(n structs.Node, vms []structs.VM) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, vm := range vms {
		if r.warned[vm.ID] == vm.Generation {
			continue
		}
		r.warned[vm.ID] = vm.Generation
		r.log.Warn("the isolation lease does not cover this ha vm: it arrived by live migration and the node has not reported it since; it restarts elsewhere only on a fence",
			"node", n.Name, "vm", vm.Name)
	}
}
