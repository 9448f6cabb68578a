package placement

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// pendingEvery is how often the pending loop runs without a wake-up.
const pendingEvery = 10 * time.Second

// Config is what a Placer needs.
type Config struct {
	State    State
	Proposer Proposer
	Options  scheduler.Options // strategy and CPU overcommit
	// HATolerate is --ha-tolerate-failures: admission control refuses a
	// new protected VM unless every protected VM could be restarted after
	// the loss of any HATolerate nodes. 0 turns admission control off.
	HATolerate int
	Logger     hclog.Logger // named server.placement by the server
}

// Placer owns the placement lock, the scheduler call and the pending-VM
// loop. One Placer per server; its loop runs only on the leader.
type Placer struct {
	state    State
	propose  Proposer
	opts     scheduler.Options
	tolerate int // --ha-tolerate-failures
	log      hclog.Logger

	// mu serialises placement decisions: the pending loop, task steps,
	// rebuild and admission-controlled creates take it exclusively
	// (Decide). The scheduler works on a read of the state, so two
	// decisions made concurrently could both take a node's last free
	// memory. Creates whose proposal carries the capacity compare-and-set
	// (fsm.Fit) take it shared (DecideShared): they run concurrently, the
	// FSM refuses whichever would overcommit, and no exclusive decision
	// interleaves with them.
	mu   sync.RWMutex
	kick chan struct{} // wakes the pending loop (capacity may have appeared)

	// resMu guards the last reservation computed (Reservation) and the
	// applied index it was computed at.
	resMu    sync.Mutex
	res      structs.HAReservation
	resIndex uint64
	resValid bool
}

// New returns a Placer.
func New(cfg Config) *Placer {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Placer{state: cfg.State, propose: cfg.Proposer, opts: cfg.Options, tolerate: cfg.HATolerate,
		log: cfg.Logger, kick: make(chan struct{}, 1)}
}

// Decide runs fn with the placement lock held. fn reads the state (Place,
// Check, PlaceAll), decides and proposes; no other decision interleaves,
// so decide-and-propose is one step on the leader, and the FSM's
// compare-and-set covers a stale view from an earlier leader. fn must not
// call Decide (the lock is not reentrant).
func (p *Placer) Decide(fn func() error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return fn()
}

// DecideShared runs fn with the placement lock held shared: concurrently
// with other shared decisions, never with an exclusive one (Decide). Use
// it only for a decision whose every placement proposal carries the
// capacity compare-and-set (PlaceFit's fsm.Fit), so that of two racing
// decisions the FSM refuses the one that would overcommit.
func (p *Placer) DecideShared(fn func() error) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return fn()
}

// NeedsAdmission reports whether placing vm desired running is admission
// control's decision (an ha VM with --ha-tolerate-failures set): Admit
// reads every VM, so such a create takes the placement lock exclusively.
func (p *Placer) NeedsAdmission(vm structs.VM) bool { return vm.Spec.HA && p.tolerate > 0 }

// Place asks the scheduler for a node for vm, avoiding exclude, over the
// derived view of the state (O(nodes)). It answers scheduler.ErrNoCapacity
// when no node fits. Outside Decide the answer is advisory (a check before
// creating a task).
func (p *Placer) Place(vm structs.VM, exclude []string) (string, error) {
	id, _, err := p.PlaceFit(vm, exclude)
	return id, err
}

// PlaceFit is Place, with the capacity compare-and-set the proposal of the
// decision carries (fsm.CreateVM.IfFits, fsm.PlaceVM.IfFits).
//
// A VM placed on no node (a create, a pending VM) is placed from the
// view's free-capacity index (scheduler.PlaceRanked): a few nodes visited
// per decision, the same answer as scoring every node. A VM being moved,
// or one that fits nowhere (to say why), is scored over every node.
func (p *Placer) PlaceFit(vm structs.VM, exclude []string) (string, *fsm.Fit, error) {
	walk := func(binpack bool, memMiB int64, visit func(*structs.Node, *structs.NodeUsage) bool) bool {
		return p.state.Ranked(vm.ID, exclude, binpack, memMiB, visit)
	}
	if id, cpuCap, ok := scheduler.PlaceRanked(walk, scheduler.Request{VM: vm, Exclude: exclude}, p.opts); ok {
		return id, &fsm.Fit{VCPUs: cpuCap}, nil
	}
	return p.placeFitAll(vm, exclude)
}

// placeFitAll is PlaceFit scoring every node (scheduler.PlaceOn).
func (p *Placer) placeFitAll(vm structs.VM, exclude []string) (string, *fsm.Fit, error) {
	nodes, used := p.state.Placement(vm.ID)
	id, err := scheduler.PlaceOn(nodes, used, scheduler.Request{VM: vm, Exclude: exclude}, p.opts)
	if err != nil {
		return "", nil, err
	}
	for i := range nodes {
		if nodes[i].ID == id {
			return id, &fsm.Fit{VCPUs: scheduler.CPUCapacity(&nodes[i], p.opts)}, nil
		}
	}
	return "", nil, fmt.Errorf("scheduler chose node %s, which is not among the nodes", id)
}

// PlaceAll places several VMs at once, each decision seeing the ones
// before it; VMs that fit nowhere are left out of the map.
//
// When every VM sits on a node each request excludes (a rebuild: the
// node rebuilt), or on none, the VMs are placed from the view's
// free-capacity index (scheduler.PlaceAllRanked, the same answer);
// otherwise by scoring every node per VM.
func (p *Placer) PlaceAll(reqs []scheduler.Request) (map[string]string, error) {
	if placed, ok := p.placeAllRanked(reqs); ok {
		return placed, nil
	}
	return p.placeAllScored(reqs)
}

func (p *Placer) placeAllRanked(reqs []scheduler.Request) (map[string]string, bool) {
	for _, r := range reqs {
		for _, o := range reqs {
			if r.VM.NodeID != "" && !slices.Contains(o.Exclude, r.VM.NodeID) {
				return nil, false
			}
		}
	}
	walk := func(req scheduler.Request) scheduler.Walk {
		return func(binpack bool, memMiB int64, visit func(*structs.Node, *structs.NodeUsage) bool) bool {
			return p.state.Ranked(req.VM.ID, req.Exclude, binpack, memMiB, visit)
		}
	}
	placed, _, ok := scheduler.PlaceAllRanked(walk, reqs, p.opts)
	return placed, ok
}

// placeAllScored is PlaceAll scoring every node per VM (scheduler.PlaceAllOn).
func (p *Placer) placeAllScored(reqs []scheduler.Request) (map[string]string, error) {
	skip := make([]string, len(reqs))
	for i, r := range reqs {
		skip[i] = r.VM.ID
	}
	nodes, used := p.state.Placement(skip...)
	placed, _ := scheduler.PlaceAllOn(nodes, used, reqs, p.opts)
	return placed, nil
}

// Check tells whether the named node can take vm: a NotFound error when
// there is no such node, a Conflict when it cannot.
func (p *Placer) Check(vm structs.VM, to string) error {
	nodes, used := p.state.Placement(vm.ID)
	var only []structs.Node
	for _, n := range nodes {
		if n.ID == to {
			only = append(only, n)
		}
	}
	if len(only) == 0 {
		return structs.NotFound("to", "node %s not found", to)
	}
	if _, err := scheduler.PlaceOn(only, used, scheduler.Request{VM: vm}, p.opts); err != nil {
		return structs.Conflict("to", "node %s cannot take vm %s: %v", only[0].Name, vm.Name, err)
	}
	return nil
}

// Admit is admission control for a protected VM about to be placed on
// nodeID (created, started, or placed from pending): a Conflict naming
// the rule (scheduler.RuleTolerateFailures) when the HA reservation would
// not hold with it. Call it inside Decide, before proposing, so that two
// admissions cannot both take the last reserve.
func (p *Placer) Admit(vm structs.VM, nodeID string) error {
	if !vm.Spec.HA || p.tolerate <= 0 {
		return nil
	}
	nodes, used := p.state.Placement(vm.ID)
	protected, err := p.state.ProtectedVMs()
	if err != nil {
		return fmt.Errorf("read protected vms: %w", err)
	}
	return scheduler.AdmitOn(nodes, used, protected, vm, nodeID, p.tolerate, p.opts)
}

// Reservation is the HA reservation over the current state: whether every
// protected VM could be restarted after the loss of any HATolerate nodes,
// and each node's share (spare capacity).
//
// The answer is cached per applied index (the alarmer asks on every pass;
// on a large cluster one check costs a scheduler run per failure set).
func (p *Placer) Reservation() (structs.HAReservation, error) {
	_, idx := p.state.Changed() // read before the state: a newer state only makes the cache older
	p.resMu.Lock()
	if p.resValid && p.resIndex == idx {
		r := p.res
		p.resMu.Unlock()
		return r, nil
	}
	p.resMu.Unlock()
	nodes, used := p.state.Placement()
	protected, err := p.state.ProtectedVMs()
	if err != nil {
		return structs.HAReservation{}, fmt.Errorf("read protected vms: %w", err)
	}
	r := scheduler.ReserveOn(nodes, used, protected, p.tolerate, p.opts)
	p.resMu.Lock()
	p.res, p.resIndex, p.resValid = r, idx, true
	p.resMu.Unlock()
	return r, nil
}

// FailoverPlan is where every protected VM would be restarted if its node
// failed now, over one read of the current state, with the reservation it
// was judged against. It is computed, never stored: ask the leader, whose
// state is the newest.
func (p *Placer) FailoverPlan() ([]structs.FailoverEntry, structs.HAReservation, error) {
	nodes, vms, err := p.read()
	if err != nil {
		return nil, structs.HAReservation{}, err
	}
	res := scheduler.Reserve(nodes, vms, p.tolerate, p.opts)
	return scheduler.Plan(nodes, vms, p.opts, res), res, nil
}

func (p *Placer) read() ([]structs.Node, []structs.VM, error) {
	nodes, err := p.state.Nodes()
	if err != nil {
		return nil, nil, fmt.Errorf("read nodes: %w", err)
	}
	vms, err := p.state.VMs()
	if err != nil {
		return nil, nil, fmt.Errorf("read vms: %w", err)
	}
	return nodes, vms, nil
}

// Kick wakes the pending loop: a node registered or was enabled.
func (p *Placer) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run places pending VMs until ctx ends (leadership lost): on a state
// change that may let a pending VM fit or be admitted (the derived view's
// epoch grew), on Kick, and every 10 s. A change that cannot help (a VM
// placed, an observation) costs one read of the epoch, not a pass.
func (p *Placer) Run(ctx context.Context) {
	var last uint64
	force := true
	for {
		ch, _ := p.state.Changed()
		if force || p.state.PlacementEpoch() != last {
			_, last = p.placePending(ctx)
		}
		force = false
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-p.kick:
			force = true
		case <-time.After(pendingEvery):
			force = true
		}
	}
}

// PlacePending is one pass of the pending loop: every unplaced VM that
// fits somewhere is placed, one decision at a time, each seeing the ones
// before it. It returns how many it placed.
func (p *Placer) PlacePending(ctx context.Context) int {
	n, _ := p.placePending(ctx)
	return n
}

// placePending is PlacePending; it also returns the epoch of the pending
// index it worked from.
func (p *Placer) placePending(ctx context.Context) (int, uint64) {
	placed := 0
	var epoch uint64
	_ = p.Decide(func() error {
		vms, ep, err := p.state.PendingVMs()
		epoch = ep
		if err != nil {
			p.log.Warn("read pending vms failed", "error", err)
			return err
		}
		for _, vm := range vms {
			if vm.NodeID != "" || ctx.Err() != nil {
				continue
			}
			nodeID, fit, err := p.PlaceFit(vm, nil)
			if err != nil {
				if !errors.Is(err, scheduler.ErrNoCapacity) {
					p.log.Warn("place pending vm failed", "vm", vm.Name, "error", err)
				}
				continue // no node fits (yet): stays pending
			}
			// A VM never placed (generation 0) is new: admission control
			// decides. One a rebuild or a failover left pending is being
			// moved, and moving a protected VM is never refused.
			if vm.DesiredState == structs.DesiredRunning && vm.Generation == 0 {
				if err := p.Admit(vm, nodeID); err != nil {
					p.log.Debug("pending ha vm not admitted", "vm", vm.Name, "error", err)
					continue // stays pending until the reservation allows it
				}
			}
			// Compare-and-set on the pending state (generation 0 cannot be
			// asserted: IfPending) and on the node's capacity (IfFits).
			if _, err := p.propose.Propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: nodeID,
				IfPending: true, IfFits: fit, Reason: "pending VM placed"}); err != nil {
				p.log.Warn("place pending vm failed", "vm", vm.Name, "error", err)
				continue
			}
			placed++
			p.log.Info("pending vm placed", "vm", vm.Name, "node", nodeID)
		}
		return nil
	})
	return placed, epoch
}
