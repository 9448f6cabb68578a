package sim

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/agent"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/server/recovery"
	"github.com/chime-ha/chime/chime/structs"
)

// Automatic HA in the simulator: the leader's recovery duty
// (chime/server/recovery) runs every second and soon after every commit;
// the agents run with --isolation-response stop and a lease when the
// schedule's "ha" header asks for one, their lease check every
// isolationCheckEvery; the fence command is simulated by its effect on the
// world (the host loses power), and a host's watchdog resets it (power off
// and on) when its agent stops petting it.
//
// Header: "ha [lease=D] [margin=D] [stop-bound=D] [heartbeat=D] [watchdog]
// [fence]" (margin: the servers' --isolation-lease-margin, default 10s;
// stop-bound: the agents' --isolation-stop-bound, default 10s; heartbeat:
// the servers' --heartbeat-interval, default 15s). A slow stop is an
// hv-fault on destroy: the isolated agent's kill fails until it is off.
// Commands:
//
//	create-ha VM [high|medium|low]   operator: create an ha VM (1 vCPU, 512 MiB) with that priority
//	fence-fails HOST on|off          the simulated fence command fails for HOST (BMC unreachable)
//	node-fence HOST                  operator: `chime node fence HOST`

// HAOptions are a run's automatic-HA settings.
type HAOptions struct {
	Lease    time.Duration // the agents' isolation lease with isolation response stop (0: keep)
	Watchdog bool          // the agents arm their host's watchdog
	Fence    bool          // the servers have a fence command (the simulated power-off)
	// Margin is the servers' --isolation-lease-margin (0: the default).
	Margin time.Duration
	// StopBound is the agents' --isolation-stop-bound (0: the default).
	StopBound time.Duration
	// Heartbeat is the servers' heartbeat interval (0: the cluster's
	// default, 15 s).
	Heartbeat time.Duration
}

// margin is the servers' lease margin of a run (nil: no HA, the default).
func (o *HAOptions) margin() time.Duration {
	if o == nil || o.Margin == 0 {
		return structs.DefaultLeaseMargin
	}
	return o.Margin
}

// stopBound is the agents' stop bound of a run.
func (o *HAOptions) stopBound() time.Duration {
	if o == nil || o.StopBound == 0 {
		return structs.DefaultStopBound
	}
	return o.StopBound
}

func (o *HAOptions) String() string {
	f := []string{"ha"}
	if o.Lease > 0 {
		f = append(f, "lease="+fmtDur(o.Lease))
	}
	if o.Margin > 0 {
		f = append(f, "margin="+fmtDur(o.Margin))
	}
	if o.StopBound > 0 {
		f = append(f, "stop-bound="+fmtDur(o.StopBound))
	}
	if o.Heartbeat > 0 {
		f = append(f, "heartbeat="+fmtDur(o.Heartbeat))
	}
	if o.Watchdog {
		f = append(f, "watchdog")
	}
	if o.Fence {
		f = append(f, "fence")
	}
	return strings.Join(f, " ")
}

// parseHAHeader reads an "ha" header line.
func parseHAHeader(f []string) (*HAOptions, error) {
	o := &HAOptions{}
	for _, a := range f[1:] {
		switch {
		case strings.HasPrefix(a, "lease="):
			d, err := time.ParseDuration(strings.TrimPrefix(a, "lease="))
			if err != nil || d < structs.MinIsolationLease {
				return nil, fmt.Errorf("lease: a duration of at least %s expected", structs.MinIsolationLease)
			}
			o.Lease = d
		case strings.HasPrefix(a, "margin="):
			d, err := time.ParseDuration(strings.TrimPrefix(a, "margin="))
			if err != nil || d < structs.MinLeaseMargin {
				return nil, fmt.Errorf("margin: a duration of at least %s expected", structs.MinLeaseMargin)
			}
			o.Margin = d
		case strings.HasPrefix(a, "stop-bound="):
			d, err := time.ParseDuration(strings.TrimPrefix(a, "stop-bound="))
			if err != nil || d < structs.MinStopBound {
				return nil, fmt.Errorf("stop-bound: a duration of at least %s expected", structs.MinStopBound)
			}
			o.StopBound = d
		case strings.HasPrefix(a, "heartbeat="):
			d, err := time.ParseDuration(strings.TrimPrefix(a, "heartbeat="))
			if err != nil || d < 100*time.Millisecond {
				return nil, fmt.Errorf("heartbeat: a duration of at least 100ms expected")
			}
			o.Heartbeat = d
		case a == "watchdog":
			o.Watchdog = true
		case a == "fence":
			o.Fence = true
		default:
			return nil, fmt.Errorf("%q: want lease=D, margin=D, stop-bound=D, heartbeat=D, watchdog or fence", a)
		}
	}
	if o.Watchdog && o.Lease == 0 {
		return nil, errors.New("watchdog needs lease=D")
	}
	return o, nil
}

func init() {
	cmdArity["create-ha"] = [2]int{1, 2}
	cmdArity["fence-fails"] = [2]int{2, 2}
	cmdArity["node-fence"] = [2]int{1, 1}
}

// execHA carries out the automatic-HA commands; ok is false for any other.
func (s *Sim) execHA(f []string) (ok bool, err error) {
	switch f[0] {
	case "create-ha":
		prio := ""
		if len(f) > 2 {
			prio = f[2]
		}
		_ = s.Ops.CreateHA(f[1], prio)
	case "fence-fails":
		h := s.Host(f[1])
		if h == nil {
			return true, fmt.Errorf("%s: no host %q", f[0], f[1])
		}
		if s.fenceFails == nil {
			s.fenceFails = map[string]bool{}
		}
		s.fenceFails[h.Name] = f[2] == "on"
		s.E.trace.Addf("fault", "%s fence command fails: %v", h.Name, f[2] == "on")
	case "node-fence":
		h := s.Host(f[1])
		if h == nil {
			return true, fmt.Errorf("%s: no host %q", f[0], f[1])
		}
		s.Ops.NodeFence(h)
	default:
		return false, nil
	}
	return true, nil
}

// CreateHA creates an ha VM with the given restart priority.
func (o *Operator) CreateHA(name, priority string) error {
	vm, err := do(o.client(), "create "+name, true, func(ep *endpoint.Endpoints, reqID string) (*structs.VM, error) {
		return ep.CreateVM(context.Background(), reqID, api.CreateVMRequest{Name: name, VCPUs: 1, Memory: 512, HA: true, Priority: priority})
	})
	w := Write{Op: "create", VM: name, Desired: structs.DesiredRunning, Flag: "ha " + priority}
	if err == nil {
		w.VMID = vm.ID
	}
	o.record(w, err)
	return err
}

// NodeFence is `chime node fence`: it runs on the leader (the operator's
// request reaches it when the path from op to the leader is up).
func (o *Operator) NodeFence(h *Host) {
	l := o.s.Cluster.leader
	var err error
	switch {
	case l == nil || l.lead == nil:
		err = structs.ErrNoLeader
	case !o.s.Net.BothWays(opMachine, l.Name, Mgmt):
		err = ErrTimeout
	default:
		var n *structs.Node
		if n, err = l.FSM.ResolveNode(h.Name); err == nil {
			_, err = l.lead.recovery.FenceNow(l.lead.ctx, *n)
		}
	}
	o.record(Write{Op: "node-fence", VM: h.Name}, err)
}

// startRecovery builds the term's recovery duty and its periodic step.
func (d *leaderDuties) startRecovery() {
	s := d.srv
	sim := s.c.sim
	var fencer recovery.Fencer
	if ha := sim.cfg.HA; ha != nil && ha.Fence {
		fencer = simFencer{sim: sim, from: s.Name}
	}
	d.recovery = recovery.New(recovery.Config{Proposer: s, State: s.FSM, Silence: d.monitor, Placer: d.placer,
		Fencer: fencer, Brake: d.guard, Clock: s.clock(), Logger: s.log, LeaseMargin: sim.cfg.HA.margin()})
	d.stops = append(d.stops, sim.E.Every(recovery.StepEvery, recovery.StepEvery, s.Name+" recovery.step", d.stepRecovery))
}

func (d *leaderDuties) stepRecovery() {
	if !d.live() {
		return
	}
	if err := d.recovery.Step(d.ctx); err != nil && d.live() {
		d.srv.log.Named("recovery").Warn("recovery pass failed", "error", err)
	}
}

// recoveryChanged wakes the recovery duty after a commit.
func (d *leaderDuties) recoveryChanged() {
	if !d.haAt.Pending() {
		d.haAt = d.srv.c.sim.E.After(onChange, d.srv.Name+" recovery.step (change)", d.stepRecovery)
	}
}

// simFencer is the fence command's effect on the world: the host loses
// power (its disk kept), unless fence-fails says the command fails.
type simFencer struct {
	sim  *Sim
	from string
}

func (f simFencer) Fence(_ context.Context, n structs.Node) (string, error) {
	h := f.sim.hostByNode(n.ID)
	if h == nil {
		return "", fmt.Errorf("no host for node %s", n.Name)
	}
	if f.sim.fenceFails[h.Name] {
		f.sim.E.trace.Addf("fault", "%s fence command run by %s: fails (BMC unreachable)", h.Name, f.from)
		f.sim.haNote("fence of %s by %s: fails", h.Name, f.from)
		return "ipmitool: Unable to establish IPMI v2 / RMCP+ session", errors.New("exit status 1")
	}
	f.sim.E.trace.Addf("fault", "%s fence command run by %s: power off", h.Name, f.from)
	f.sim.haNote("fence of %s by %s: power off", h.Name, f.from)
	if h.powered {
		h.PowerOff(false)
	}
	return "Chassis Power Control: Down/Off", nil
}

// haAgentOptions sets the agent's isolation settings from the run's HA
// options and returns the options that give it its host's watchdog.
func (h *Host) haAgentOptions(cfg *agent.Config) []agent.Option {
	ha := h.sim.cfg.HA
	if ha == nil || ha.Lease == 0 {
		return nil
	}
	cfg.IsolationResponse, cfg.IsolationLease = structs.IsolationStop, ha.Lease
	cfg.IsolationStopBound = ha.stopBound()
	if !ha.Watchdog {
		return nil
	}
	if h.watchdogDev == nil {
		h.watchdogDev = &simWatchdog{h: h}
	}
	return []agent.Option{agent.WithWatchdog(h.watchdogDev)}
}

// startIsolation schedules the agent's lease check (IsolationOnce).
func (p *agentProc) startIsolation() {
	ha := p.h.sim.cfg.HA
	if ha == nil || ha.Lease == 0 {
		return
	}
	every := agent.IsolationCheckEvery(ha.Lease, ha.stopBound(), ha.margin())
	p.stops = append(p.stops, p.h.sim.E.Every(every, every, "", func() { p.run("isolation", func() { p.a.IsolationOnce(p.ctx) }) }))
}

// simWatchdog is a host's watchdog device. The first pet arms it, each
// pet pushes its deadline; when the deadline passes the host resets
// (power off, power on). Close (the magic close) disarms it; a killed
// agent leaves it armed; a power loss resets the device.
type simWatchdog struct {
	h       *Host
	timeout time.Duration
	fire    *Event // pending expiry while armed
}

func (w *simWatchdog) Pet(timeout time.Duration) error {
	if w.fire.Pending() && timeout != w.timeout {
		w.h.sim.E.trace.Addf("host", "%s watchdog timeout %s (was %s)", w.h.Name, timeout, w.timeout)
	}
	w.timeout = timeout
	if !w.fire.Pending() {
		w.h.sim.E.trace.Addf("host", "%s watchdog armed (timeout %s)", w.h.Name, w.timeout)
	}
	w.fire.Cancel()
	w.fire = w.h.sim.E.After(w.timeout, w.h.Name+" watchdog", w.expire)
	return nil
}

func (w *simWatchdog) Close() error {
	w.fire.Cancel()
	return nil
}

func (w *simWatchdog) expire() {
	h := w.h
	if !h.powered {
		return
	}
	h.sim.E.trace.Addf("fault", "%s watchdog expired (not petted for %s): host reset", h.Name, w.timeout)
	h.sim.haNote("%s watchdog expired: host reset", h.Name)
	h.PowerOff(false)
	h.PowerOn()
}

// disarmWatchdog is a power loss's effect on the device.
func (h *Host) disarmWatchdog() {
	if h.watchdogDev != nil {
		h.watchdogDev.fire.Cancel()
	}
}

// haWorld is the timeline of what automatic HA did to the world, for the
// golden log of an HA run: every start and stop of an ha VM's qemu (on
// which host), every simulated fence and watchdog reset. It is read from
// the hypervisors after every event, not from chime's state.
type haWorld struct {
	where map[string]string // vm id → host its qemu runs on ("" none)
	lines []string
}

func (s *Sim) haNote(format string, args ...any) {
	if s.haw == nil {
		return
	}
	s.haw.lines = append(s.haw.lines, fmt.Sprintf("%s %s", strings.TrimSpace(stamp(s.E.Elapsed())), fmt.Sprintf(format, args...)))
}

// haTrack compares where each ha VM's qemu runs with the last event's view.
func (s *Sim) haTrack() {
	ha := map[string]string{} // vm id → name
	for _, w := range s.Ops.Writes {
		if w.VMID != "" && strings.HasPrefix(w.Flag, "ha") {
			ha[w.VMID] = w.VM
		}
	}
	now := map[string][]string{}
	for _, h := range s.Hosts {
		for _, q := range h.HV.Running() {
			if _, ok := ha[q.UUID]; ok {
				now[q.UUID] = append(now[q.UUID], h.Name)
			}
		}
	}
	for _, id := range sortedKeys(ha) {
		on := strings.Join(now[id], ",")
		if was := s.haw.where[id]; was != on {
			switch {
			case was == "":
				s.haNote("vm %s: qemu started on %s", ha[id], on)
			case on == "":
				s.haNote("vm %s: qemu stopped on %s", ha[id], was)
			default:
				s.haNote("vm %s: qemu on %s (was %s)", ha[id], on, was)
			}
			s.haw.where[id] = on
		}
	}
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// haGolden is the HA timeline section of the golden log ("" without HA).
func (s *Sim) haGolden() string {
	if s.haw == nil {
		return ""
	}
	return "## ha world (qemus of ha VMs, fences, watchdog resets)\n" + strings.Join(s.haw.lines, "\n") + "\n"
}
