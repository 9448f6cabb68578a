package sim

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

// Config is one simulated run's setup.
type Config struct {
	Seed      uint64
	Hosts     int    // hypervisor hosts; default 3
	Scheduler string // placement strategy; default the scheduler's
	Cluster   ClusterConfig
	// Dir is where state files go; default a fresh directory under
	// /dev/shm when it exists (bbolt on tmpfs), else the system temp dir.
	// Close removes it.
	Dir string
	// Parent is where that fresh directory is made (see Dir).
	Parent string
	// LogLevel of the production code's loggers, whose lines go into the
	// trace (default Info).
	LogLevel hclog.Level
	// HostVCPUs and HostMemoryMiB are each host's capacity.
	HostVCPUs, HostMemoryMiB int
	// HATolerate > 0 turns admission control on, tolerating that many
	// failures (the HAReservationBroken alarm with it). The brake guard
	// always runs, at the default share, as in production.
	HATolerate int
	// HA are the automatic-HA settings (ha.go); nil: the agents keep
	// their VMs when isolated and the servers have no fence command.
	HA *HAOptions
}

// Sim is one simulated chime deployment: the world (time, randomness,
// trace), its network, three servers and the hosts, each with its
// hypervisor and agent.
type Sim struct {
	cfg     Config
	E       *Engine
	Net     *Network
	Cluster *Cluster
	Hosts   []*Host
	Ops     *Operator
	Check   *Checker
	ownDir  bool

	// nextMigration is the scripted outcome of the next live migration of
	// a VM (by id); migrationFaults the probability that an unscripted one
	// fails (before, during, or with its reply lost).
	nextMigration   map[string]MigrationOutcome
	migrationFaults float64
	localMoves      []localMove
	co              coroutines      // restarts in progress (restart.go)
	inter           interleaving    // on-propose (interleave.go)
	fenceFails      map[string]bool // hosts whose simulated fence command fails (ha.go)
	haw             *haWorld        // the HA timeline of an HA run (ha.go)
}

// localMove is a node-local migration an operator ran (agent migrate).
type localMove struct {
	vmID, to string
	at       time.Time
}

// New builds a deployment at Epoch: servers up (the first election
// follows after the election timeout), hosts powered with their agents
// started.
func New(cfg Config) (*Sim, error) {
	if cfg.Hosts == 0 {
		cfg.Hosts = 3
	}
	if cfg.HostVCPUs == 0 {
		cfg.HostVCPUs = 16
	}
	if cfg.HostMemoryMiB == 0 {
		cfg.HostMemoryMiB = 32768
	}
	if cfg.LogLevel == hclog.NoLevel {
		cfg.LogLevel = hclog.Info
	}
	s := &Sim{cfg: cfg, E: NewEngine(cfg.Seed), nextMigration: map[string]MigrationOutcome{}}
	if cfg.Dir == "" {
		base := cfg.Parent
		if st, err := os.Stat("/dev/shm"); base == "" && err == nil && st.IsDir() {
			base = "/dev/shm"
		}
		dir, err := os.MkdirTemp(base, runDirPattern())
		if err != nil {
			return nil, fmt.Errorf("sim dir: %w", err)
		}
		s.cfg.Dir, s.ownDir = dir, true
	}
	s.cfg.Cluster.Dir = s.cfg.Dir + "/servers"
	s.E.trace.dir = s.cfg.Dir
	s.Net = NewNetwork(s.E)
	s.Check = newChecker(s)
	s.Ops = newOperator(s)
	c, err := newCluster(s, s.cfg.Cluster)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.Cluster = c
	for i := 1; i <= cfg.Hosts; i++ {
		h, err := newHost(s, fmt.Sprintf("h%d", i))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Hosts = append(s.Hosts, h)
	}
	for _, h := range s.Hosts {
		h.boot()
	}
	s.E.OnEachEvent(s.resumeParked)
	s.E.OnEachEvent(s.pollAgents)
	s.E.OnEachEvent(s.Check.afterEvent)
	if cfg.HA != nil {
		s.haw = &haWorld{where: map[string]string{}}
		s.E.OnEachEvent(s.haTrack)
	}
	s.E.trace.Addf("sim", "seed %d: %d servers, %d hosts", cfg.Seed, len(c.Servers), len(s.Hosts))
	return s, nil
}

// Close stops every server and agent and removes the state directory.
func (s *Sim) Close() error {
	var errs []error
	for _, h := range s.Hosts {
		h.shutdown()
	}
	if s.Cluster != nil {
		for _, srv := range s.Cluster.Servers {
			if srv.up {
				errs = append(errs, srv.FSM.Close())
			}
		}
	}
	if s.ownDir {
		errs = append(errs, os.RemoveAll(s.cfg.Dir))
	}
	return errors.Join(errs...)
}

// Config returns the run's configuration (defaults filled in).
func (s *Sim) Config() Config { return s.cfg }

// logger is a production logger whose lines go into the trace.
func (s *Sim) logger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: s.cfg.LogLevel, Output: logWriter{s.E.trace},
		DisableTime: true})
}

// Host returns a host by name, or nil.
func (s *Sim) Host(name string) *Host {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// hostByNode returns the host whose agent registered node id, or nil.
func (s *Sim) hostByNode(id string) *Host {
	for _, h := range s.Hosts {
		if h.nodeID != "" && h.nodeID == id {
			return h
		}
	}
	return nil
}

// gossipMembers are the machines whose memberlist runs now: up servers
// and hosts whose agent answers.
func (s *Sim) gossipMembers() []string {
	var out []string
	for _, srv := range s.Cluster.Servers {
		if srv.up {
			out = append(out, srv.Name)
		}
	}
	for _, h := range s.Hosts {
		if h.listening() == nil {
			out = append(out, h.Name)
		}
	}
	sort.Strings(out)
	return out
}

// errForwardedToFollower is what a forwarded request gets on a server that
// is not the leader (production answers 503 instead of hopping again).
var errForwardedToFollower = fmt.Errorf("%w: forwarded request reached a server that is not the leader", structs.ErrNoLeader)

// serverCall sends one leader-only request from machine `from` to server
// `to` over the management network. The server handles it if it leads,
// forwards it once to the leader it hears from otherwise, and answers 503
// when it knows none. A server's answer comes back as an *api.Error, as
// over HTTP; a network failure as a *NetError.
func serverCall[T any](s *Sim, from string, to *Server, what string, fn func(ep *endpoint.Endpoints) (T, error)) (T, error) {
	out, err := Send(s.Net, from, to.Name, Mgmt, what, func() (T, error) { return handleAt(s, to, what, false, fn) })
	var ne *NetError
	if err != nil && !errors.As(err, &ne) {
		err = api.AsError(err)
	}
	return out, err
}

func handleAt[T any](s *Sim, srv *Server, what string, forwarded bool, fn func(ep *endpoint.Endpoints) (T, error)) (T, error) {
	var zero T
	if l := s.Cluster.leader; l == srv && srv.lead != nil {
		if s.inter.paused == srv.lead && (strings.HasPrefix(what, "rebuild ") || strings.HasPrefix(what, "create ")) {
			// A create or rebuild takes the placement lock, which the
			// paused decision may hold (interleave.go): in production it
			// waits; here, where it would deadlock the one thread, the
			// server answers busy and the client retries elsewhere.
			return zero, fmt.Errorf("%w: %s waits for the placement lock of a paused decision", structs.ErrNoLeader, what)
		}
		return fn(srv.lead.ep)
	}
	if forwarded {
		return zero, errForwardedToFollower
	}
	l := s.Cluster.leader
	// A follower knows the leader from its appends: the path leader →
	// follower must be up.
	if l == nil || !s.Net.PathUp(l.Name, srv.Name, Mgmt) {
		return zero, fmt.Errorf("%w: server %s knows no leader", structs.ErrNoLeader, srv.Name)
	}
	out, err := Send(s.Net, srv.Name, l.Name, Mgmt, "forward "+what, func() (T, error) { return handleAt(s, l, what, true, fn) })
	var ne *NetError
	if errors.As(err, &ne) {
		// The follower's proxy turns a failed forward into a 503-like
		// answer; the client retries elsewhere.
		return zero, fmt.Errorf("%w: forward to %s: %v", structs.ErrNoLeader, l.Name, err)
	}
	return out, err
}

// localMigrationGrace reports whether the copy of vm on host is exempt
// from invariant 4 because an operator's node-local migration brought it
// there recently: the servers learn of it from the destination's next
// heartbeats (its adoption claim) or the source's migration log, so for up
// to three heartbeat intervals the copy is legitimately placed elsewhere.
// Those intervals count from when a leader could hear of it: a migration
// run while the servers had no quorum (node-local migrations need no
// servers, uniqueness rule 7) is news to the leader elected afterwards,
// whose state is the one the outage froze.
func (s *Sim) localMigrationGrace(vmID, host string) bool {
	limit := 3 * s.Cluster.cfg.HeartbeatInterval
	for _, m := range s.localMoves {
		if m.vmID == vmID && m.to == host && inLocalMigrationGrace(m.at, s.Cluster.elected, s.E.Now(), limit) {
			return true
		}
	}
	return false
}

// inLocalMigrationGrace is localMigrationGrace's rule for one migration
// run at movedAt, under a leader elected at electedAt, at now: the grace
// lasts limit from the later of the two (a leader elected after the
// migration had no way to know of it before it was elected).
func inLocalMigrationGrace(movedAt, electedAt, now time.Time, limit time.Duration) bool {
	from := movedAt
	if electedAt.After(from) {
		from = electedAt
	}
	return !now.Before(movedAt) && now.Sub(from) <= limit
}

// afterCommit runs after every entry the leader l committed and applied:
// it wakes the duties waiting on l's FSM and the agents whose blocking
// query for their desired state returns.
func (s *Sim) afterCommit(l *Server, index uint64) {
	if l.lead != nil {
		l.lead.changed()
	}
	for _, h := range s.Hosts {
		if h.proc != nil && h.nodeID != "" {
			h.proc.desiredMoved(l.FSM.NodeIndex(h.nodeID))
		}
	}
}

// pollAgents asks every live agent, after every event, what it wants to do
// next (a reconcile pass after a libvirt event, an early heartbeat).
func (s *Sim) pollAgents() {
	for _, h := range s.Hosts {
		if h.proc != nil {
			h.proc.poll()
		}
	}
}
