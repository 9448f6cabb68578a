package hapolicy

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// guardEvery is how often the guard looks without a state change.
const guardEvery = 5 * time.Second

// Proposer applies a command to the replicated state: the server's Raft
// proposal on the leader, or fsm.Direct in tests and the simulator.
type Proposer interface {
	Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error)
}

// State is the part of the replicated state the guard reads (*fsm.FSM).
type State interface {
	Nodes() ([]structs.Node, error)
	// NodesView lists every node from the FSM's derived view: a copy, no
	// bbolt read and no decoding (the guard counts them after every apply).
	NodesView() []structs.Node
	HA() (structs.HAState, error)
	// Changed returns a channel closed at the next applied change.
	Changed() (<-chan struct{}, uint64)
}

// Reserver computes the HA reservation over the current state
// (placement.Placer).
type Reserver interface {
	Reservation() (structs.HAReservation, error)
}

// Config is what a Guard needs.
type Config struct {
	State    State
	Proposer Proposer
	Reserver Reserver // for Alarms and Status; nil: no reservation
	Share    float64  // --ha-brake-share; 0 means DefaultBrakeShare
	// LeaseMargin is --isolation-lease-margin (0: the default), for the
	// HALeaseNotCounted alarm.
	LeaseMargin time.Duration
	Logger      hclog.Logger // named server.hapolicy by the server
}

// Guard records the mass-failure brake's transitions while its server
// leads (Run), carries out the operator's arm and disarm (SetArmed), and
// answers whether automatic HA may act (Armed).
type Guard struct {
	state   State
	propose Proposer
	reserve Reserver
	share   float64
	margin  time.Duration
	log     hclog.Logger
}

// New returns a Guard.
func New(cfg Config) *Guard {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Share == 0 {
		cfg.Share = DefaultBrakeShare
	}
	if cfg.LeaseMargin == 0 {
		cfg.LeaseMargin = structs.DefaultLeaseMargin
	}
	return &Guard{state: cfg.State, propose: cfg.Proposer, reserve: cfg.Reserver, share: cfg.Share, margin: cfg.LeaseMargin, log: cfg.Logger}
}

// Share is the brake share the guard judges with.
func (g *Guard) Share() float64 { return g.share }

// Armed reads the state and applies Armed: whether automatic HA may
// restart anything now, and why not. A read error disarms (fail safe).
func (g *Guard) Armed() (bool, string) {
	ha, err := g.state.HA()
	if err != nil {
		return false, fmt.Sprintf("read the HA switch: %v", err)
	}
	nodes := g.state.NodesView()
	return Armed(ha, nodes, g.share)
}

// HAArmed is Armed without the reason: the recovery duty's Brake
// interface (chime/server/recovery) is satisfied by a *Guard.
func (g *Guard) HAArmed() bool {
	ok, _ := g.Armed()
	return ok
}

// Run records the brake's transitions until ctx ends (leadership lost):
// on every applied change and every few seconds.
func (g *Guard) Run(ctx context.Context) {
	for {
		ch, _ := g.state.Changed()
		if err := g.Step(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("ha guard pass failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(guardEvery):
		}
	}
}

// Step proposes the brake transition the state calls for, if any.
func (g *Guard) Step(ctx context.Context) error {
	ha, err := g.state.HA()
	if err != nil {
		return fmt.Errorf("read the HA switch: %w", err)
	}
	nodes := g.state.NodesView()
	next := Next(ha, nodes, g.share)
	if next == nil {
		return nil
	}
	if _, err := g.propose.Propose(ctx, "", fsm.CmdSetHABrake, *next); err != nil {
		return fmt.Errorf("record brake: %w", err)
	}
	switch {
	case next.Engaged:
		g.log.Warn("mass-failure brake engaged: automatic HA paused", "unreachable", next.Unreachable, "nodes", next.Nodes)
	case ha.Brake:
		g.log.Info("mass-failure brake released", "unreachable", next.Unreachable, "nodes", next.Nodes)
	}
	return nil
}

// SetArmed carries out `chime operator ha arm|disarm`. Arming releases an
// engaged brake and acknowledges the nodes unreachable now: the brake
// engages again only when more become unreachable.
func (g *Guard) SetArmed(ctx context.Context, reqID string, armed bool, reason string) (*api.HAStatus, error) {
	nodes, err := g.state.Nodes()
	if err != nil {
		return nil, fmt.Errorf("read nodes: %w", err)
	}
	cmd := fsm.SetHAArmed{Armed: armed, Reason: reason}
	if armed {
		cmd.AckUnreachable, _ = Count(nodes)
	}
	if _, err := g.propose.Propose(ctx, reqID, fsm.CmdSetHAArmed, cmd); err != nil {
		return nil, err
	}
	return g.Status()
}

// Status reads the switch, the node counts and the reservation.
func (g *Guard) Status() (*api.HAStatus, error) {
	ha, err := g.state.HA()
	if err != nil {
		return nil, fmt.Errorf("read the HA switch: %w", err)
	}
	nodes, err := g.state.Nodes()
	if err != nil {
		return nil, fmt.Errorf("read nodes: %w", err)
	}
	st := &api.HAStatus{Switch: ha, BrakeShare: g.share}
	st.Armed, st.Reason = Armed(ha, nodes, g.share)
	st.Unreachable, st.Counted = Count(nodes)
	if g.reserve != nil {
		res, err := g.reserve.Reservation()
		if err != nil {
			return nil, err
		}
		st.Reservation = &res
	}
	return st, nil
}

// Alarms is the alarmer's Extra: the HA alarms of the current state.
func (g *Guard) Alarms(now time.Time) ([]structs.Alarm, error) {
	ha, err := g.state.HA()
	if err != nil {
		return nil, fmt.Errorf("read the HA switch: %w", err)
	}
	res := structs.HAReservation{OK: true}
	if g.reserve != nil {
		if res, err = g.reserve.Reservation(); err != nil {
			return nil, err
		}
	}
	// The view's nodes: the alarmer asks after every change (at most every
	// 250 ms), and decoding 10,000 nodes from the state file each time
	// was 11 to 13 % of the leader's CPU while VMs were being created.
	return append(Alarms(ha, res, now), LeaseAlarms(g.state.NodesView(), g.margin, now)...), nil
}
