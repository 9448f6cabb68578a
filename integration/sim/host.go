package sim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

// A simulated host: its power, its hypervisor (the simulated libvirtd and
// qemus, which outlive the agent), the agent's state directory on its
// local disk, and the agent process.

// bootTime is how long a host takes from power-on to a running agent.
const bootTime = 30 * time.Second

// Host is one simulated hypervisor host.
type Host struct {
	sim     *Sim
	Name    string
	HV      *Hypervisor
	dir     string // the agent's data dir on the local disk
	powered bool
	frozen  bool
	nodeID  string // the node id the agent last registered as
	// clockSkew is how far the host's wall clock is off (host-clock-jump):
	// the agent's clock.Clock reads simulated time plus it.
	clockSkew time.Duration
	proc      *agentProc // the agent process (nil: not running)
	// diskFault makes the agent's storage probe fail.
	diskFault bool
	// hvFaults are the libvirt calls that fail (hv-fault): the value is how
	// many calls of that kind still pass before they fail.
	hvFaults map[Op]int
	// watchdogDev is the watchdog device the agent armed (ha.go).
	watchdogDev *simWatchdog
}

func newHost(s *Sim, name string) (*Host, error) {
	h := &Host{sim: s, Name: name, dir: filepath.Join(s.cfg.Dir, "hosts", name), powered: true, hvFaults: map[Op]int{}}
	hv, err := NewHypervisor(HypervisorConfig{Name: name, Clock: s.E.Now, World: s, Fault: h.hvFault,
		VCPUs: s.cfg.HostVCPUs, MemoryMiB: s.cfg.HostMemoryMiB, Migration: s.decideMigration,
		UUIDSource: RandReader{s.E}})
	if err != nil {
		return nil, err
	}
	h.HV = hv
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	s.Net.Listen(name, h.listening)
	return h, nil
}

// hvFault is the hypervisor's fault hook: the calls hv-fault switched on
// fail before they change anything. It is called with the hypervisor's
// lock held and reads only the host's own map.
func (h *Host) hvFault(c Call) Fault {
	pass, ok := h.hvFaults[c.Op]
	switch {
	case !ok:
		return Fault{}
	case pass > 0:
		h.hvFaults[c.Op] = pass - 1
		return Fault{}
	}
	return Fault{Err: fmt.Errorf("simulated libvirt failure of %s", c.Op)}
}

// setHVFault makes the calls of op fail after `pass` more calls passed
// (on), or pass again (off).
func (h *Host) setHVFault(op Op, on bool, pass int) {
	if on {
		h.hvFaults[op] = pass
	} else {
		delete(h.hvFaults, op)
	}
	h.sim.E.trace.Addf("fault", "%s libvirt %s calls fail: %v (after %d more)", h.Name, op, on, pass)
}

// listening is whether the agent process answers requests now.
func (h *Host) listening() error {
	switch {
	case !h.powered || h.frozen:
		return ErrTimeout
	case h.proc == nil:
		return ErrUnreachable
	}
	return nil
}

// AgentUp reports whether the agent process runs (frozen or not).
func (h *Host) AgentUp() bool { return h.proc != nil }

// Powered reports whether the host has power.
func (h *Host) Powered() bool { return h.powered }

// Frozen reports whether the agent is stopped by SIGSTOP.
func (h *Host) Frozen() bool { return h.frozen }

// NodeID is the node id the host's agent registered as ("" before).
func (h *Host) NodeID() string { return h.nodeID }

func (h *Host) boot() {
	h.startAgent()
}

func (h *Host) startAgent() {
	if h.proc != nil || !h.powered {
		return
	}
	if err := h.HV.Open(); err != nil {
		// systemd restarts an agent that cannot connect to libvirt.
		h.sim.E.trace.Addf("host", "%s agent start: %v; restarted in 10s", h.Name, err)
		h.sim.E.After(10*time.Second, h.Name+" agent start (retry)", h.startAgent)
		return
	}
	p, err := startAgent(h)
	if err != nil {
		h.sim.E.trace.Addf("host", "%s agent start failed: %v; restarted in 10s", h.Name, err)
		h.sim.E.After(10*time.Second, h.Name+" agent start (retry)", h.startAgent)
		return
	}
	h.proc = p
	h.sim.E.trace.Addf("host", "%s agent started (node id %s)", h.Name, p.a.NodeID())
}

func (h *Host) stopAgent() {
	if h.proc == nil {
		return
	}
	h.proc.kill()
	h.proc = nil
	h.frozen = false
	_ = h.HV.Close()
}

func (h *Host) shutdown() { h.stopAgent() }

// CrashAgent kills the agent process; its state dir is kept, or removed
// when lose is set (a lost or wiped /var/lib/chime).
func (h *Host) CrashAgent(lose bool) {
	h.sim.E.trace.Addf("fault", "%s agent crash (state dir %s)", h.Name, keptLost(lose))
	h.stopAgent()
	if lose {
		h.loseDisk()
	}
}

// RestartAgent starts the agent again (after CrashAgent).
func (h *Host) RestartAgent() {
	h.sim.E.trace.Addf("fault", "%s agent restart", h.Name)
	h.startAgent()
}

// PowerOff cuts the host's power: every qemu dies, the agent with it.
// The local disk (libvirt's definitions, the agent's state dir) is kept or
// lost.
func (h *Host) PowerOff(lose bool) {
	h.sim.E.trace.Addf("fault", "%s power off (disk %s)", h.Name, keptLost(lose))
	h.stopAgent()
	h.disarmWatchdog()
	h.HV.PowerOff(!lose)
	h.powered = false
	if lose {
		h.loseDisk()
	}
}

// PowerOn restores power; the agent starts after bootTime.
func (h *Host) PowerOn() {
	if h.powered {
		return
	}
	h.sim.E.trace.Addf("fault", "%s power on", h.Name)
	h.HV.PowerOn()
	h.powered = true
	h.sim.E.After(bootTime, h.Name+" boot", h.startAgent)
}

// Freeze stops the agent process (SIGSTOP): it takes no step and answers
// nothing until Thaw.
func (h *Host) Freeze() {
	if h.proc == nil {
		return
	}
	h.sim.E.trace.Addf("fault", "%s agent freeze", h.Name)
	h.frozen = true
}

// Thaw resumes a frozen agent; its timers that fell due meanwhile fire now.
func (h *Host) Thaw() {
	if !h.frozen {
		return
	}
	h.sim.E.trace.Addf("fault", "%s agent thaw", h.Name)
	h.frozen = false
	if h.proc != nil {
		h.proc.thawed()
	}
}

func (h *Host) loseDisk() {
	if err := os.RemoveAll(h.dir); err != nil {
		h.sim.E.trace.Addf("host", "%s remove state dir: %v", h.Name, err)
	}
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		h.sim.E.trace.Addf("host", "%s make state dir: %v", h.Name, err)
	}
}

func keptLost(lose bool) string {
	if lose {
		return "lost"
	}
	return "kept"
}

// Addr is the host's address on a network: 10.0.0.(10+i) on management,
// 10.1.0.(10+i) on business, for host hi.
func (h *Host) Addr(k Net) string {
	i := 0
	fmt.Sscanf(h.Name, "h%d", &i)
	if k == Business {
		return fmt.Sprintf("10.1.0.%d", 10+i)
	}
	return fmt.Sprintf("10.0.0.%d", 10+i)
}

// machineAt names the machine at an address (a bare IP, or host:port) and
// the network the address is on; ok is false for an unknown address.
func (s *Sim) machineAt(addr string) (name string, k Net, ok bool) {
	ip := hostOfAddr(addr)
	for _, h := range s.Hosts {
		for _, k := range []Net{Mgmt, Business} {
			if h.Addr(k) == ip {
				return h.Name, k, true
			}
		}
	}
	for _, srv := range s.Cluster.Servers {
		if srv.Addr() == ip {
			return srv.Name, Mgmt, true
		}
	}
	return "", Mgmt, false
}

// HypervisorAt is the World the hypervisors migrate through: the host at
// a libvirt or migration URI's host part.
func (s *Sim) HypervisorAt(addr string) *Hypervisor {
	name, _, ok := s.machineAt(addr)
	if !ok {
		return nil
	}
	if h := s.Host(name); h != nil {
		return h.HV
	}
	return nil
}

// MigrationLinkUp says whether from's libvirtd reaches to's, and its qemu
// the destination's migration port: both ways on every network the
// migration's URIs named (addrs; the management network when none does).
func (s *Sim) MigrationLinkUp(from, to string, addrs ...string) bool {
	var nets []Net
	for _, a := range addrs {
		if _, k, ok := s.machineAt(a); ok {
			nets = append(nets, k)
		}
	}
	if len(nets) == 0 {
		nets = []Net{Mgmt}
	}
	for _, k := range nets {
		if !s.Net.BothWays(from, to, k) {
			return false
		}
	}
	return true
}

// decideMigration draws a live migration's outcome: the scripted one when
// a scenario set it, else from the run's random source with the
// configured probabilities (all success by default).
func (s *Sim) decideMigration(m Migration) MigrationOutcome {
	out := MigrationSucceeds
	if o, ok := s.nextMigration[m.UUID]; ok {
		out = o
		delete(s.nextMigration, m.UUID)
	} else if p := s.migrationFaults; p > 0 && s.E.rand.Float64() < p {
		out = MigrationOutcome(1 + s.E.rand.IntN(3))
	}
	s.E.trace.Addf("hv", "migration %s %s>%s gen %d: %s", structs.ShortID(m.UUID), m.From, m.To, m.Generation, out)
	return out
}

// agentServers is the agent's Servers: chime's HTTP client, as the world
// sees it (a client that retries over the simulated network), with the
// node's credentials.
type agentServers struct {
	h            *Host
	c            *client
	node, secret string
}

func newAgentServers(h *Host) *agentServers { return &agentServers{h: h, c: newClient(h.sim, h.Name)} }

func (a *agentServers) SetCredentials(node, secret string) { a.node, a.secret = node, secret }

func (a *agentServers) Addrs() []string {
	var out []string
	for _, s := range a.h.sim.Cluster.Servers {
		out = append(out, s.Name+":4650")
	}
	return out
}

func (a *agentServers) Register(ctx context.Context, r api.RegisterRequest) (*api.RegisterResponse, error) {
	resp, err := do(a.c, "register "+a.h.Name, true, func(ep *endpoint.Endpoints, reqID string) (api.RegisterResponse, error) {
		return ep.Register(context.Background(), reqID, r)
	})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

func (a *agentServers) Desired(ctx context.Context, q api.QueryOptions) (*api.DesiredState, error) {
	node, secret := a.node, a.secret
	ds, err := do(a.c, "desired "+a.h.Name, false, func(ep *endpoint.Endpoints, _ string) (api.DesiredState, error) {
		n, err := ep.Authenticate(node, secret)
		if err != nil {
			return api.DesiredState{}, err
		}
		return ep.Desired(n)
	})
	if err != nil {
		return nil, err
	}
	return &ds, nil
}

func (a *agentServers) Heartbeat(ctx context.Context, r api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	node, secret := a.node, a.secret
	resp, err := do(a.c, "heartbeat "+a.h.Name, true, func(ep *endpoint.Endpoints, _ string) (api.HeartbeatResponse, error) {
		n, err := ep.Authenticate(node, secret)
		if err != nil {
			return api.HeartbeatResponse{}, err
		}
		return ep.Heartbeat(context.Background(), n, r)
	})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

func (a *agentServers) ReportMigration(ctx context.Context, r api.MigrationReport) error {
	node, secret := a.node, a.secret
	_, err := do(a.c, "migrated "+a.h.Name, true, func(ep *endpoint.Endpoints, reqID string) (struct{}, error) {
		n, err := ep.Authenticate(node, secret)
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, ep.Migrated(context.Background(), reqID, n, r)
	})
	return err
}
