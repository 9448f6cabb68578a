package placement

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

	// mu serialises placement decisions: create, the pending loop, task
	// steps and rebuild. The scheduler works on a read of the state, so two
	// decisions made concurrently could both take a node's last free memory.
	mu   sync.Mutex
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

// Place asks the scheduler for a node for vm, avoiding exclude, over the
// current state. It answers scheduler.ErrNoCapacity when no node fits.
// Outside Decide the answer is advisory (a check before creating a task).
func (p *Placer) Place(vm structs.VM, exclude []string) (string, error) {
	nodes, vms, err := p.read()
	if err != nil {
		return "", err
	}
	return scheduler.Place(nodes, vms, scheduler.Request{VM: vm, Exclude: exclude}, p.opts)
}

// PlaceAll places several VMs at once, each decision seeing the ones
// before it; VMs that fit nowhere are left out of the map.
func (p *Placer) PlaceAll(reqs []scheduler.Request) (map[string]string, error) {
	nodes, vms, err := p.read()
	if err != nil {
		return nil, err
	}
	placed, _ := scheduler.PlaceAll(nodes, vms, reqs, p.opts)
	return placed, nil
}

// Check tells whether the named node can take vm: a NotFound error when
// there is no such node, a Conflict when it cannot.
func (p *Placer) Check(vm structs.VM, to string) error {
	nodes, vms, err := p.read()
	if err != nil {
		return err
	}
	var only []structs.Node
	for _, n := range nodes {
		if n.ID == to {
			only = append(only, n)
		}
	}
	if len(only) == 0 {
		return structs.NotFound("to", "node %s not found", to)
	}
	if _, err := scheduler.Place(only, vms, scheduler.Request{VM: vm}, p.opts); err != nil {
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
	nodes, vms, err := p.read()
	if err != nil {
		return err
	}
	return scheduler.Admit(nodes, vms, vm, nodeID, p.tolerate, p.opts)
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
	nodes, vms, err := p.read()
	if err != nil {
		return structs.HAReservation{}, err
	}
	r := scheduler.Reserve(nodes, vms, p.tolerate, p.opts)
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

// Run places pending VMs until ctx ends (leadership lost): on every state
// change, on Kick, and every 10 s.
func (p *Placer) Run(ctx context.Context) {
	for {
		ch, _ := p.state.Changed()
		p.PlacePending(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-p.kick:
		case <-time.After(pendingEvery):
		}
	}
}

// PlacePending is one pass of the pending loop: every unplaced VM that
// fits somewhere is placed, one decision at a time, each seeing the ones
// before it. It returns how many it placed.
func (p *Placer) PlacePending(ctx context.Context) int {
	placed := 0
	_ = p.Decide(func() error {
		vms, err := p.state.VMs()
		if err != nil {
			p.log.Warn("read vms failed", "error", err)
			return err
		}
		for _, vm := range vms {
			if vm.NodeID != "" || ctx.Err() != nil {
				continue
			}
			nodeID, err := p.Place(vm, nil)
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
			// asserted, so check the VM is still unplaced right before).
			if cur, err := p.state.VM(vm.ID); err != nil || cur.NodeID != "" {
				continue
			}
			if _, err := p.propose.Propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: nodeID, Reason: "pending VM placed"}); err != nil {
				p.log.Warn("place pending vm failed", "vm", vm.Name, "error", err)
				continue
			}
			placed++
			p.log.Info("pending vm placed", "vm", vm.Name, "node", nodeID)
		}
		return nil
	})
	return placed
}
