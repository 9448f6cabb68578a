package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/chime-ha/chime/chime/agent"
	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
)

// One agent process on a simulated host: the real chime/agent, built with
// the simulated world injected (servers through the simulated network,
// the simulated clock, the run's random source, inline guest shutdowns,
// the host's storage and interfaces) and driven through its step methods
// as simulated events at production periods:
//
//   - registration at start, retried with the agent's back-off, and again
//     whenever the servers no longer accept its credentials;
//   - a desired-state sync at once after registration, whenever the
//     leader's desired-state index for the node moved (the answer to the
//     agent's blocking query), every 30 s (the query's wait), and with
//     back-off after a failure;
//   - a reconcile pass every sweep interval and whenever the agent asks for
//     one (a new desired state, a libvirt event, a hold that changed);
//   - a heartbeat every heartbeat interval, early when the agent asks;
//   - the health probes every probe interval.
//
// After every simulated event the driver asks the agent what it wants
// (TakeRequests), as its loops would learn from their channels. A frozen
// agent (SIGSTOP) takes no step: what fell due meanwhile runs at the thaw.
// A dead agent's pending work never runs.

// Agent timing (production values).
const (
	desiredWait       = 30 * time.Second // the blocking query's wait: the agent asks again at least this often
	sweepInterval     = 10 * time.Second
	healthInterval    = 30 * time.Second
	agentShutdownWait = 60 * time.Second // --shutdown-grace
	requestDelay      = 10 * time.Millisecond
)

// agentProc is one run of the agent process.
type agentProc struct {
	h     *Host
	a     *agent.Agent
	clk   *agentClock
	srv   *agentServers
	ctx   context.Context
	stop  context.CancelFunc
	dead  bool
	reg   bool // registered in this process
	tries map[string]int

	pending map[string]*Event // one pending step per kind (coalescing)
	missed  []string          // steps that fell due while frozen, in order
	stops   []func()

	notified uint64 // the leader's desired-state index this process was last woken for
}

func startAgent(h *Host) (*agentProc, error) {
	s := h.sim
	p := &agentProc{h: h, tries: map[string]int{}, pending: map[string]*Event{}}
	p.clk = &agentClock{p: p, e: s.E}
	p.srv = newAgentServers(h)
	p.ctx, p.stop = context.WithCancel(context.Background())
	var servers []string
	for _, srv := range s.Cluster.Servers {
		servers = append(servers, srv.Addr()+":4650")
	}
	cfg := agent.DefaultConfig()
	cfg.Name = h.Name
	cfg.DataDir = h.dir
	cfg.Servers = servers
	cfg.Advertise = h.Addr(Mgmt)
	cfg.MigrationAddr = h.Addr(Mgmt)
	cfg.SweepInterval = sweepInterval
	cfg.ShutdownGrace = agentShutdownWait
	cfg.BusinessProbeInterval = healthInterval
	// The business probe: biz0's state and a TCP connect to the business
	// network's gateway, through the simulated network (businessNet).
	cfg.BusinessInterface = "biz0"
	cfg.BusinessProbes = []string{gatewayAddr + ":9"}
	cfg.Logger = s.logger(h.Name + ".agent")
	haOpts := h.haAgentOptions(&cfg)
	a, err := agent.New(cfg, h.HV, append([]agent.Option{
		agent.WithServers(p.srv),
		agent.WithAnnouncer(simAnnouncer{h}),
		agent.WithClock(p.clk),
		agent.WithRandom(RandReader{s.E}),
		agent.WithInlineShutdowns(),
		agent.WithStorageProbe(h.storageProbe),
		agent.WithInterfaces(h.iface),
		agent.WithBusinessNet(businessNet{h}),
		agent.WithMachineID(machineID(h.Name)),
	}, haOpts...)...,
	)
	if err != nil {
		return nil, err
	}
	p.a = a
	p.startIsolation()
	p.schedule("register", 0, p.register)
	return p, nil
}

// kill ends the process: nothing it scheduled runs anymore.
func (p *agentProc) kill() {
	p.dead = true
	p.stop()
	for _, ev := range p.pending {
		ev.Cancel()
	}
	for _, s := range p.stops {
		s()
	}
	if err := p.a.Close(); err != nil {
		p.h.sim.E.trace.Addf("host", "%s agent close: %v", p.h.Name, err)
	}
}

// schedule runs step kind after d unless one of that kind is pending.
func (p *agentProc) schedule(kind string, d time.Duration, fn func()) {
	if ev := p.pending[kind]; ev.Pending() {
		return
	}
	p.pending[kind] = p.h.sim.E.After(d, p.h.Name+" agent."+kind, func() { p.run(kind, fn) })
}

// reschedule is schedule, replacing a pending step of that kind.
func (p *agentProc) reschedule(kind string, d time.Duration, fn func()) {
	p.pending[kind].Cancel()
	delete(p.pending, kind)
	p.schedule(kind, d, fn)
}

// run runs one step, unless the process is dead or frozen.
func (p *agentProc) run(kind string, fn func()) {
	if p.dead {
		return
	}
	if p.h.frozen {
		for _, m := range p.missed {
			if m == kind {
				return
			}
		}
		p.missed = append(p.missed, kind)
		return
	}
	fn()
	p.poll()
}

// thawed runs what fell due while frozen.
func (p *agentProc) thawed() {
	missed := p.missed
	p.missed = nil
	for _, kind := range missed {
		switch kind {
		case "register":
			p.schedule(kind, 0, p.register)
		case "sync":
			p.schedule(kind, 0, p.sync)
		case "heartbeat":
			p.schedule(kind, 0, p.heartbeat)
		case "reconcile", "sweep":
			p.schedule("reconcile", 0, p.reconcile)
		case "health":
			p.schedule(kind, 0, p.health)
		}
	}
}

// poll takes what the agent asked for since the last poll.
func (p *agentProc) poll() {
	// Before registration Run's reconciler and heartbeat loop do not run
	// yet: libvirt events and requests wait in their channels.
	if p.dead || p.h.frozen || !p.reg {
		return
	}
	r := p.a.TakeRequests()
	if r.Reconcile {
		p.schedule("reconcile", requestDelay, p.reconcile)
	}
	if r.Heartbeat && p.reg {
		p.reschedule("heartbeat", requestDelay, p.heartbeat)
	}
}

func (p *agentProc) backoff(kind string) time.Duration {
	d := clock.Backoff(p.tries[kind])
	p.tries[kind]++
	return d
}

func (p *agentProc) register() {
	if err := p.a.RegisterOnce(p.ctx); err != nil {
		p.schedule("register", p.backoff("register"), p.register)
		return
	}
	p.tries["register"] = 0
	first := !p.reg
	p.reg = true
	p.h.nodeID = p.a.NodeID()
	if first {
		// A lie about this host is corrected once its agent is back
		// (lieActive): the pardon runs from here.
		p.h.sim.Ops.correctLies(p.h.Name)
	}
	p.schedule("sync", 0, p.sync)
	if first {
		p.schedule("heartbeat", p.a.HeartbeatInterval(), p.heartbeat)
		w := p.h.sim.E
		p.stops = append(p.stops,
			w.Every(sweepInterval, sweepInterval, "", func() { p.run("sweep", p.reconcile) }),
			w.Every(0, healthInterval, "", func() { p.run("health", p.health) }),
			w.Every(desiredWait, desiredWait, "", func() { p.run("sync", p.sync) }),
		)
	}
}

// registrationLost handles an answer saying the servers do not accept
// the node's credentials: register again.
func (p *agentProc) registrationLost(err error) bool {
	if !agent.RegistrationLost(err) {
		return false
	}
	p.schedule("register", 0, p.register)
	return true
}

func (p *agentProc) sync() {
	err := p.a.SyncOnce(p.ctx)
	switch {
	case err == nil:
		p.tries["sync"] = 0
	case p.registrationLost(err):
	default:
		p.schedule("sync", p.backoff("sync"), p.sync)
	}
}

func (p *agentProc) heartbeat() {
	err := p.a.HeartbeatOnce(p.ctx)
	if err != nil && !errors.Is(err, agent.ErrNotSettled) {
		p.registrationLost(err)
	}
	p.reschedule("heartbeat", p.a.HeartbeatInterval(), p.heartbeat)
}

func (p *agentProc) reconcile() { _, _ = p.a.ReconcileOnce(p.ctx) }

func (p *agentProc) health() { p.a.HealthOnce(p.ctx) }

// desiredMoved is called when the leader's desired-state index of the
// node moved: the agent's blocking query returns, and it syncs.
func (p *agentProc) desiredMoved(index uint64) {
	if p.dead || !p.reg || index <= p.notified {
		return
	}
	p.notified = index
	p.schedule("sync", requestDelay, p.sync)
}

// agentClock is the agent's clock.Clock on simulated time. Its AfterFunc
// callbacks (the HA operations' background work) run as simulated events,
// never for a dead process, and are deferred while it is frozen.
type agentClock struct {
	p *agentProc
	e *Engine
}

var _ clock.Clock = (*agentClock)(nil)

// Now is the host's wall clock: simulated time plus the host's skew
// (host-clock-jump). Timers and tickers count durations (Go's monotonic
// clock), which a wall-clock jump does not move. A time.Time cannot carry
// a monotonic reading here, so a jump moves every reading, also those
// production compares monotonically (docs/testing.md: a stricter fault).
func (c *agentClock) Now() time.Time { return c.e.Now().Add(c.p.h.clockSkew) }

func (c *agentClock) NewTimer(d time.Duration) clock.Timer { return newSimTimer(c.e, "", d, 0, nil) }

func (c *agentClock) NewTicker(d time.Duration) clock.Ticker {
	return simTicker{newSimTimer(c.e, "", d, d, nil)}
}

func (c *agentClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	p := c.p
	return newSimTimer(c.e, p.h.Name+" agent.background", d, 0, func() {
		if p.dead {
			return
		}
		if p.h.frozen {
			// Re-armed at the thaw: a stopped process does nothing.
			p.waitThaw(f)
			return
		}
		f()
		p.poll()
	})
}

// waitThaw runs f after the thaw.
func (p *agentProc) waitThaw(f func()) {
	p.h.sim.E.After(time.Second, "", func() {
		if p.dead {
			return
		}
		if p.h.frozen {
			p.waitThaw(f)
			return
		}
		f()
		p.poll()
	})
}

type simTicker struct{ t *simTimer }

func (t simTicker) C() <-chan time.Time { return t.t.C() }
func (t simTicker) Stop()               { t.t.Stop() }

// simAnnouncer tells a destination agent that a domain is coming (POST
// /v1/adopt on its agent API), over the network the address is on.
type simAnnouncer struct{ h *Host }

func (a simAnnouncer) AnnounceAdoption(ctx context.Context, dest string, ad store.Adoption) (string, error) {
	s := a.h.sim
	name, k, ok := s.machineAt(dest)
	d := s.Host(name)
	if !ok || d == nil {
		return "", fmt.Errorf("announce adoption to %s: no agent there", dest)
	}
	return Send(s.Net, a.h.Name, d.Name, k, "adopt "+ad.Name, func() (string, error) {
		if err := d.proc.a.Adopt(ctx, ad); err != nil {
			return "", wireError(err)
		}
		return d.proc.a.NodeID(), nil
	})
}

// storageProbe is the agent's write probe of a storage path: it fails
// while the host has a disk fault.
func (h *Host) storageProbe(dir string) error {
	if h.diskFault {
		return fmt.Errorf("write %s/.chime-probe: input/output error", dir)
	}
	return nil
}

// gatewayMachine is the business network's gateway, the agents' business
// probe target (as the lab's bridge address is): a machine with only a
// business link, at gatewayAddr. Its port 9 refuses connections, which
// proves the path (a refused connect is an answer).
const (
	gatewayMachine = "gw"
	gatewayAddr    = "10.1.0.1"
)

// businessNet is the agent's business probe's network (health.BusinessNet):
// biz0 is up while the host's business link is; a connect to the gateway
// is refused (an answer) while the path to it is up both ways, and times
// out otherwise. It only reads the network (the health check may call it
// from its probe goroutines).
type businessNet struct{ h *Host }

func (b businessNet) Link(iface string) (bool, string) {
	if iface != "biz0" {
		return false, "interface " + iface + " not found"
	}
	if !b.h.sim.Net.LinkUp(b.h.Name, Business) {
		return false, "interface biz0 is down"
	}
	return true, ""
}

func (b businessNet) Dial(_ context.Context, iface, target string, _ time.Duration) error {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return err
	}
	if iface != "biz0" || host != gatewayAddr || !b.h.sim.Net.BothWays(b.h.Name, gatewayMachine, Business) {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
}

// iface is the host's network interfaces: mgmt0 and biz0, up while the
// host's link on that network is.
func (h *Host) iface(name string) (handover.Interface, error) {
	var k Net
	switch name {
	case "mgmt0":
		k = Mgmt
	case "biz0":
		k = Business
	default:
		return handover.Interface{}, fmt.Errorf("no interface %s", name)
	}
	_, subnet, _ := net.ParseCIDR(h.Addr(k) + "/24")
	subnet.IP = net.ParseIP(h.Addr(k))
	return handover.Interface{Up: h.sim.Net.LinkUp(h.Name, k), Addrs: []net.Addr{subnet}}, nil
}

// LocalDrain runs `chime agent drain` on the host: the drain begins now,
// and its wait polls every half second until nothing runs or the drain's
// bound (2 × grace + 30 s) passed.
func (h *Host) LocalDrain() error {
	p := h.proc
	if p == nil || h.frozen {
		return fmt.Errorf("agent drain on %s: the agent does not answer on its socket", h.Name)
	}
	id, err := p.a.BeginDrain(p.ctx)
	if err != nil {
		h.sim.E.trace.Addf("op", "%s agent drain: %v", h.Name, err)
		return err
	}
	p.poll()
	deadline := h.sim.E.Now().Add(2*agentShutdownWait + 30*time.Second)
	var wait func()
	wait = func() {
		if p.dead {
			return
		}
		res, err := p.a.DrainProgress(p.ctx)
		p.poll()
		if err == nil && len(res.Running) > 0 && h.sim.E.Now().Before(deadline) {
			h.sim.E.After(500*time.Millisecond, "", func() { p.run("drain-wait", wait) })
			return
		}
		h.sim.E.trace.Addf("op", "%s agent drain %s: done (running %v, stopped %v, err %v)", h.Name, id, res.Running, res.Stopped, err)
	}
	h.sim.E.After(500*time.Millisecond, "", func() { p.run("drain-wait", wait) })
	h.sim.E.trace.Addf("op", "%s agent drain: begun (id %s)", h.Name, id)
	return nil
}

// LocalMigrate runs `chime agent migrate --uuid VM --dest DEST_ADDR
// --interface mgmt0|biz0` on the host.
func (h *Host) LocalMigrate(vmID string, dest *Host, k Net) ([]local.MigrateResult, error) {
	p := h.proc
	if p == nil || h.frozen {
		return nil, fmt.Errorf("agent migrate on %s: the agent does not answer on its socket", h.Name)
	}
	ifc := "mgmt0"
	if k == Business {
		ifc = "biz0"
	}
	res, err := p.a.Migrate(p.ctx, local.MigrateRequest{Interface: ifc, UUID: vmID, Dest: dest.Addr(k)})
	p.poll()
	return res, err
}

// wireError is err as it crosses an HTTP API: an *api.Error, or nil.
func wireError(err error) error {
	if err == nil {
		return nil
	}
	return api.AsError(err)
}

// machineID is host name's /etc/machine-id: its own, the same ever after
// (a reinstall from another host's image keeps this one: the simulator
// clones only libvirt's host UUID).
func machineID(name string) string {
	sum := sha256.Sum256([]byte("chime-sim-machine:" + name))
	return hex.EncodeToString(sum[:16])
}
