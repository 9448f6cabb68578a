package sim

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/server/hapolicy"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/server/recovery"
	"github.com/chime-ha/chime/chime/server/tasks"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/scheduler"
)

// The leader's duties, driven as simulated events at their production
// periods: the node monitor's check every interval/4, the task runner
// every 2 s and soon after every applied change, the pending-VM placement
// after every change and every 10 s, the alarmer every 5 s and 250 ms
// after a change (its debounce). A duty's loop in production waits on the
// FSM's change channel; here each commit on the leader schedules the
// duty's next pass (one at a time: wake-ups coalesce, as a closed channel
// does).

// Periods of the duties (their production values).
const (
	tasksEvery     = 2 * time.Second
	placementEvery = 10 * time.Second
	alarmsEvery    = 5 * time.Second
	alarmsDebounce = 250 * time.Millisecond
	guardEvery     = 5 * time.Second // hapolicy.Guard.Run's idle period
	// onChange is how long after a commit a woken duty runs: the time a
	// Raft commit and the wake-up take.
	onChange = 5 * time.Millisecond
)

// leaderDuties are one term's duties on one server. They are built fresh
// at each election, so nothing an earlier term kept in memory survives.
type leaderDuties struct {
	srv     *Server
	term    uint64
	ctx     context.Context
	cancel  context.CancelFunc
	monitor *heartbeat.Monitor
	runner  *tasks.Runner
	placer  *placement.Placer
	alarmer *alarms.Alarmer
	guard   *hapolicy.Guard // the arm switch and the mass-failure brake
	ep      *endpoint.Endpoints
	// recovery is automatic HA (ha.go); haAt its pending on-change wake-up.
	recovery *recovery.Recoverer
	haAt     *Event

	stops                  []func() // the periodic events
	tasksAt, placeAt, alAt *Event   // the pending on-change wake-ups
	guardAt                *Event
}

func newLeaderDuties(s *Server, term uint64) *leaderDuties {
	sim := s.c.sim
	w := sim.E
	ctx, cancel := context.WithCancel(context.Background())
	d := &leaderDuties{srv: s, term: term, ctx: ctx, cancel: cancel}
	cfg := s.c.cfg
	d.monitor = heartbeat.New(heartbeat.Config{Interval: cfg.HeartbeatInterval, Missed: cfg.MissedHeartbeats,
		Proposer: s, State: s.FSM, Clock: s.clock(), Pinger: pinger{s}, Gossip: gossipView{s}, Logger: s.log})
	d.monitor.Reset()
	d.placer = placement.New(placement.Config{State: s.FSM, Proposer: s,
		Options:    scheduler.Options{Strategy: scheduler.Strategy(sim.cfg.Scheduler)},
		HATolerate: sim.cfg.HATolerate, Logger: s.log.Named("placement")})
	d.runner = tasks.New(tasks.Config{State: s.FSM, Proposer: s, Placer: d.placer, Clock: s.clock(), Logger: s.log.Named("tasks")})
	alCfg := alarms.Config{State: s.FSM, Proposer: s, Clock: s.clock(), Logger: s.log.Named("alarms")}
	// The guard runs as in production (the brake at the default share);
	// admission control only with the scenario header ha-tolerate N.
	d.guard = hapolicy.New(hapolicy.Config{State: s.FSM, Proposer: s, Reserver: d.placer, LeaseMargin: s.c.sim.cfg.HA.margin(), Logger: s.log.Named("hapolicy")})
	alCfg.Extra = d.guard.Alarms
	d.alarmer = alarms.New(alCfg)
	d.ep = endpoint.New(endpoint.Config{Proposer: s, State: coState{s.FSM, sim}, Placer: d.placer, Tasks: d.runner, Monitor: d.monitor,
		Clock: coClock{s.clock(), sim}, IDs: simIDs{w}, Agents: agentConfig{s.c}})

	name := func(duty string) string { return fmt.Sprintf("%s %s", s.Name, duty) }
	check := max(cfg.HeartbeatInterval/4, 50*time.Millisecond)
	d.stops = append(d.stops,
		w.Every(check, check, name("monitor.check"), func() { d.monitor.CheckOnce(d.ctx) }),
		w.Every(0, tasksEvery, name("tasks.step"), d.stepTasks),
		w.Every(0, placementEvery, name("placement.pending"), d.placePending),
		w.Every(0, alarmsEvery, name("alarms.step"), d.stepAlarms),
	)
	d.stops = append(d.stops, w.Every(0, guardEvery, name("hapolicy.step"), d.stepGuard))
	d.startRecovery()
	s.c.sim.E.trace.Addf("raft", "%s duties started (term %d)", s.Name, term)
	return d
}

func (d *leaderDuties) live() bool { return d.ctx.Err() == nil }

// held: a proposal of this server is paused (interleave.go).
func (d *leaderDuties) held() bool { return d.srv.c.sim.held(d) }

func (d *leaderDuties) stepTasks() {
	if d.live() && !d.held() {
		_ = d.runner.Step(d.ctx) // each failure is logged by Step
	}
}

func (d *leaderDuties) placePending() {
	if d.live() && !d.held() {
		d.placer.PlacePending(d.ctx)
	}
}

func (d *leaderDuties) stepGuard() {
	if d.live() {
		if err := d.guard.Step(d.ctx); err != nil && d.live() {
			d.srv.log.Named("hapolicy").Warn("ha guard pass failed", "error", err)
		}
	}
}

func (d *leaderDuties) stepAlarms() {
	if !d.live() || d.held() {
		return
	}
	if err := d.alarmer.Step(d.ctx); err != nil && d.live() {
		d.srv.log.Named("alarms").Warn("alarm pass failed", "error", err)
	}
}

// changed is called after every commit on this leader: it wakes the duties
// whose production loops wait on the FSM's change channel.
func (d *leaderDuties) changed() {
	if !d.live() {
		return
	}
	w := d.srv.c.sim.E
	if !d.tasksAt.Pending() {
		d.tasksAt = w.After(onChange, d.srv.Name+" tasks.step (change)", d.stepTasks)
	}
	if !d.placeAt.Pending() {
		d.placeAt = w.After(onChange, d.srv.Name+" placement.pending (change)", d.placePending)
	}
	if !d.alAt.Pending() {
		d.alAt = w.After(alarmsDebounce, d.srv.Name+" alarms.step (change)", d.stepAlarms)
	}
	if !d.guardAt.Pending() {
		d.guardAt = w.After(onChange, d.srv.Name+" hapolicy.step (change)", d.stepGuard)
	}
	d.recoveryChanged()
}

// stop ends the term: every pending duty event is cancelled and the
// context the duties were given is cancelled.
func (d *leaderDuties) stop() {
	d.cancel()
	for _, stop := range d.stops {
		stop()
	}
	d.tasksAt.Cancel()
	d.placeAt.Cancel()
	d.alAt.Cancel()
	d.guardAt.Cancel()
	d.haAt.Cancel()
	d.srv.c.sim.E.trace.Addf("raft", "%s duties stopped (term %d)", d.srv.Name, d.term)
}

// pinger is the monitor's direct ping-back: GET /v1/ping on the agent, over
// the management network from the leader to the node's host. It answers
// when the agent process runs and is not frozen, with the agent's own
// answer, judged as the server's pinger judges it (heartbeat.CheckAnswer).
type pinger struct{ s *Server }

func (p pinger) Ping(ctx context.Context, n structs.Node) error {
	host, k, ok := p.s.c.sim.machineAt(n.APIAddr)
	if !ok {
		return fmt.Errorf("ping %s: no machine at %s", n.Name, n.APIAddr)
	}
	ans, err := Send(p.s.c.sim.Net, p.s.Name, host, k, "ping "+n.Name, func() (api.PingResponse, error) {
		h := p.s.c.sim.Host(host)
		if h == nil || h.proc == nil {
			return api.PingResponse{}, ErrUnreachable
		}
		return h.proc.a.Ping(), nil
	})
	if err != nil {
		return err
	}
	return heartbeat.CheckAnswer(n, ans.NodeID, ans.Registered)
}

// gossipView is memberlist's liveness hint as the leader sees it: the
// node's agent (a gossip member) answers a probe from the leader itself or
// from another live member the leader reaches (SWIM's indirect probes).
type gossipView struct{ s *Server }

func (g gossipView) Reachable(nodeID string) bool {
	sim := g.s.c.sim
	h := sim.hostByNode(nodeID)
	if h == nil || h.listening() != nil {
		return false
	}
	nw := sim.Net
	for _, m := range sim.gossipMembers() {
		if m == h.Name {
			continue
		}
		if nw.BothWays(g.s.Name, m, Mgmt) && nw.BothWays(m, h.Name, Mgmt) {
			return true
		}
	}
	return false
}

// hostOfAddr returns the machine name in host:port.
func hostOfAddr(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// simIDs are the endpoints' ids and secrets, from the run's random source.
type simIDs struct{ e *Engine }

func (i simIDs) NewID() string { return i.e.ID() }

func (i simIDs) NewSecret() string {
	var b [32]byte
	_, _ = RandReader{i.e}.Read(b[:])
	return fmt.Sprintf("%x", b[:])
}

// agentConfig is what register and heartbeat answers carry: the servers'
// timing, and the servers' gossip addresses.
type agentConfig struct{ c *Cluster }

func (a agentConfig) Timing() api.Timing {
	return api.Timing{HeartbeatInterval: a.c.cfg.HeartbeatInterval, MissedHeartbeats: a.c.cfg.MissedHeartbeats,
		LeaseMargin: a.c.sim.cfg.HA.margin()}
}

func (a agentConfig) GossipAddrs() []string {
	var out []string
	for _, s := range a.c.Servers {
		out = append(out, s.Name+":4648")
	}
	return out
}
