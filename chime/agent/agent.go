package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/agent/health"
	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/gossip"
	"github.com/hashicorp/go-hclog"
)

const (
	defaultHeartbeatInterval = 15 * time.Second
	desiredWait              = 30 * time.Second
	faultLibvirt             = "libvirtd unreachable"
	// faultNotSynced: the agent lost the servers for a heartbeat interval
	// or more and its desired-state sync since has not succeeded: it may
	// run a copy rebuilt elsewhere meanwhile (uniqueness rule 9).
	faultNotSynced = "desired state not synced since contact with the servers was lost"
)

// Hypervisor is the part of the libvirt driver the agent uses: what the
// reconciler and the HA operations call, plus what registration and the
// heartbeat read. *hypervisor.Driver implements it.
type Hypervisor interface {
	reconcile.Hypervisor
	handover.Hypervisor
	Connected() bool
	Capacity(ctx context.Context) (vcpus, memMiB int, err error)
	// HostUUID is libvirt's host UUID (capabilities' <host><uuid>): the
	// node id of a new data dir (uniqueness rule 10).
	HostUUID(ctx context.Context) (string, error)
}

// hostUUIDTimeout bounds New's one libvirt call, the host UUID.
const hostUUIDTimeout = 30 * time.Second

// Agent is one agent. New opens its local state; Run drives it with
// goroutines and timers, or a caller steps it one unit of work at a time
// (RegisterOnce, SyncOnce, ReconcileOnce, HeartbeatOnce, HealthOnce, the
// local operations): see DESIGN.md, "Steps".
type Agent struct {
	cfg     Config
	hv      Hypervisor
	store   *store.Store
	servers Servers
	clock   clock.Clock
	random  io.Reader // node secret; drain ids come from it too
	rec     *reconcile.Reconciler
	ops     *handover.Manager // migrations, local drain, adoptions, fencing holds
	health  *health.Checker   // local health checks; their faults go into every heartbeat
	nodeID  string
	// hostUUID and machineID are the host identity facts every
	// registration presents ("" when unreadable).
	hostUUID, machineID string
	logger              hclog.Logger
	tls                 *tlsconf.Material // nil: the agent API and its clients are plaintext

	mu          sync.Mutex
	desired     *api.DesiredState // last accepted desired state (nil before the first sync of this process); replaced, never mutated
	hold        []string          // VM ids whose instruction was refused by the fencing rule
	timing      api.Timing        // from the servers
	lastContact time.Time         // last successful answer from a server
	registered  bool              // the servers accepted this process's registration and refused no credentials since
	syncedAt    time.Time         // last successful desired-state answer (new or not)
	lostAt      time.Time         // first failed request to the servers since syncedAt (zero: none)
	contactErr  error             // error of the last request to the servers (nil: it succeeded)
	apiAddr     net.Addr          // where the agent API listens
	gossipAddrs []string          // the servers' memberlist addresses, from registration and heartbeats

	pool *gossip.Pool // set by Run before registration

	// The isolation lease (isolation.go), guarded by mu.
	leaseUntil        time.Time     // the lease runs out then (isolation response stop)
	isolatedFlag      bool          // the lease ran out and no acknowledgement came since
	isolatedUntilSync bool          // acknowledged again, but no sync after it yet
	stopped           bool          // isolated, and a pass since the lease ran out stopped every VM
	stopOverrun       bool          // isolated, and the stop budget passed before every VM was stopped
	marginSeen        time.Duration // the servers' lease margin of the last answer that had one
	boundExceeds      bool          // the stop bound exceeds marginSeen (faultStopBound)
	watchdog          Watchdog      // nil: none armed
	acked             bool          // a heartbeat of this process was acknowledged (the watchdog is petted from then on)

	heartbeatNow chan struct{} // capacity 1: send the next heartbeat early
	heartbeatSem chan struct{} // capacity 1: one heartbeat at a time (see sendHeartbeat)
}

// New opens the agent's local state in cfg.DataDir and wires the reconciler
// and the HA operations to hv. The caller owns hv. It opens no listener
// and starts no goroutine: Run does that, or the caller steps the agent.
// opts replace the production world (HTTP, wall clock, crypto/rand).
func New(cfg Config, hv Hypervisor, opts ...Option) (*Agent, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.clock == nil {
		o.clock = clock.Wall{}
	}
	if o.random == nil {
		o.random = rand.Reader
	}
	random := &lockedReader{r: o.random}
	var tlsm *tlsconf.Material
	if cfg.TLS.Enabled() {
		var err error
		if tlsm, err = tlsconf.Load(cfg.TLS); err != nil {
			return nil, err
		}
		if err := tlsm.Expect(tlsconf.RoleAgent); err != nil {
			return nil, err
		}
		if cfg.Logger != nil {
			log := cfg.Logger.Named("tls")
			tlsm.OnReload(func(file string, err error) {
				if err != nil {
					log.Error("TLS certificate changed on disk but not loaded; the old one stays in use", "file", file, "error", err)
					return
				}
				log.Info("TLS certificate reloaded", "file", file)
			})
		}
	}
	if o.servers == nil {
		c := api.NewClient(cfg.Servers...)
		c.Token = cfg.JoinToken
		if tlsm != nil {
			c.UseTLS(tlsm.ClientConfig(tlsconf.RoleServer))
		}
		// A heartbeat given up on must not arrive later (sendHeartbeat).
		c.DiscardUnsentOnClose()
		o.servers = c
	}
	if o.announcer == nil {
		o.announcer = newPeerClient(cfg.APIPort, tlsm)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, stateFile))
	if err != nil {
		return nil, err
	}
	id, host, err := nodeIdentity(hv, st, cfg.Logger)
	if err != nil {
		st.Close()
		return nil, err
	}
	drained, err := st.Drained()
	if err != nil {
		st.Close()
		return nil, err
	}
	if o.machineID == nil {
		o.machineID = readMachineID
	}
	a := &Agent{cfg: cfg, hv: hv, store: st, nodeID: id, hostUUID: host, machineID: o.machineID(), logger: cfg.Logger, tls: tlsm,
		servers: o.servers, clock: o.clock, random: random,
		timing:       api.Timing{HeartbeatInterval: defaultHeartbeatInterval},
		heartbeatNow: make(chan struct{}, 1), heartbeatSem: make(chan struct{}, 1),
		watchdog: o.watchdog}
	a.leaseUntil = o.clock.Now().Add(startLease(cfg.IsolationLease, cfg.stopBound()))
	a.rec, err = reconcile.New(reconcile.Config{
		Hypervisor: hv, Definitions: st, Inputs: a.reconcileInputs,
		SweepInterval: cfg.SweepInterval, ShutdownGrace: cfg.ShutdownGrace,
		ShutdownInline: o.inline, Clock: o.clock,
		Logger:  cfg.Logger.Named("reconciler"),
		Changed: a.requestHeartbeat,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	a.ops = handover.New(handover.Config{
		NodeID: id, Hypervisor: hv, Store: st, Reporter: o.servers,
		Announcer:     o.announcer,
		ShutdownGrace: cfg.ShutdownGrace, Drained: drained,
		Trigger: a.rec.Trigger, Changed: a.requestHeartbeat,
		Prove: func(vmID string, gen uint64) string {
			secret, err := st.Secret()
			if err != nil || secret == "" {
				return ""
			}
			return structs.AdoptionProof(structs.HashSecret(secret), vmID, gen)
		},
		Clock: o.clock, Rand: random, Interfaces: o.interfaces,
		Logger: cfg.Logger.Named("handover"),
	})
	hc := cfg.healthConfig(a.requestHeartbeat)
	hc.Clock, hc.StorageProbe, hc.BusinessNet = o.clock, o.storageProbe, o.businessNet
	a.health = health.New(hc)
	return a, nil
}

// nodeIdentity is the node id of this host (uniqueness rule 10): the one
// kept in the local state, or for a new (or lost) data dir libvirt's host
// UUID, so that an agent that lost its data dir comes back as the same
// node. A state written on another host is refused. When libvirt cannot
// tell the host UUID, a kept node id is used all the same.
func nodeIdentity(hv Hypervisor, st *store.Store, log hclog.Logger) (id, host string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), hostUUIDTimeout)
	defer cancel()
	host, err = hv.HostUUID(ctx)
	if err != nil {
		log.Warn("cannot read libvirt's host UUID; using the node id of the data dir, if any", "error", err)
		host = ""
	}
	id, err = st.Identity(host)
	if err != nil {
		if host == "" {
			return "", "", fmt.Errorf("%w (libvirt: host uuid unreadable)", err)
		}
		return "", "", fmt.Errorf("--data-dir: %w", err)
	}
	if host != "" && id != host {
		log.Info("node id kept from an older agent's data dir, not derived from the host UUID", "node_id", id, "host_uuid", host)
	}
	return id, strings.ToLower(host), nil
}

// machineIDFile is systemd's machine id (machine-id(5)).
const machineIDFile = "/etc/machine-id"

// readMachineID returns the host's machine id, "" when the file is
// missing or does not hold one: a fact of the host identity the servers
// bind the node to, not a requirement.
func readMachineID() string {
	b, err := os.ReadFile(machineIDFile)
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		return ""
	}
	return id
}

// Registered reports whether the servers accepted this process's
// registration and have refused none of its credentials since: what the
// ping-back answer says (api.PingResponse.Registered).
func (a *Agent) Registered() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.registered
}

func (a *Agent) setRegistered(ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.registered = ok
}

// Close stops the HA operations still in flight and closes the local state.
func (a *Agent) Close() error {
	a.ops.Close()
	return a.store.Close()
}

// NodeID is the node id this agent registers with.
func (a *Agent) NodeID() string { return a.nodeID }

// Reconciler returns the agent's reconciler.
func (a *Agent) Reconciler() *reconcile.Reconciler { return a.rec }

// APIAddr is where the agent API listens (nil before Run has bound it).
func (a *Agent) APIAddr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.apiAddr
}

// reconcileInputs feeds the reconciler. Until the first successful sync of
// this process it returns ErrNotSynced: a restarted agent starts nothing on
// the strength of a desired state persisted before it went away. When the
// fencing records behind the holds cannot be read it returns that error,
// and the reconciler changes nothing.
func (a *Agent) reconcileInputs() (reconcile.Inputs, error) {
	if a.isolated() {
		// Before the first sync too: the VMs a dead predecessor left
		// running must stop all the same.
		return reconcile.Inputs{Isolated: true}, nil
	}
	a.mu.Lock()
	ds, refused := a.desired, slices.Clone(a.hold)
	a.mu.Unlock()
	if ds == nil && mutationStartBeforeSync {
		ds, _ = a.store.Desired() // the deliberately broken rule (see mutation.go)
	}
	if ds == nil {
		return reconcile.Inputs{}, reconcile.ErrNotSynced
	}
	hold, err := a.ops.Hold(*ds)
	if err != nil {
		return reconcile.Inputs{}, fmt.Errorf("holds of the HA operations: %w", err)
	}
	return reconcile.Inputs{
		Desired: slices.Clone(ds.VMs),
		// A node drained by the servers keeps its VMs stopped as well.
		Drained: a.ops.Drained() || ds.ManagementState == structs.NodeDrained,
		Hold:    append(refused, hold...),
	}, nil
}

// Run serves the agent API and the local socket, registers, then runs the
// desired-state watch, the reconciler and the heartbeats until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer a.ops.Close() // migrations in flight end with the agent

	apiLn, err := net.Listen("tcp", net.JoinHostPort(a.cfg.Bind, strconv.Itoa(a.cfg.APIPort)))
	if err != nil {
		return fmt.Errorf("--api-port: listen: %w", err)
	}
	a.mu.Lock()
	a.apiAddr = apiLn.Addr()
	a.mu.Unlock()
	sockLn, err := local.Listen(a.cfg.SocketPath())
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("--socket: %w", err)
	}
	for _, srv := range []struct {
		ln net.Listener
		h  http.Handler
	}{{a.apiListener(apiLn), a.apiHandler()}, {sockLn, local.Handler(localBackend{a})}} {
		hs := &http.Server{Handler: srv.h, ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := hs.Serve(srv.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.logger.Error("listener failed", "addr", srv.ln.Addr().String(), "error", err)
			}
		})
		wg.Go(func() {
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			if err := hs.Shutdown(sctx); err != nil {
				a.logger.Warn("listener did not shut down cleanly", "addr", srv.ln.Addr().String(), "error", err)
			}
		})
	}
	pool, err := a.startGossip(ctx)
	if err != nil {
		return fmt.Errorf("--gossip-port: %w", err)
	}
	a.pool = pool
	defer func() {
		if err := pool.Leave(time.Second); err != nil {
			a.logger.Debug("gossip leave", "error", err)
		}
		if err := pool.Shutdown(); err != nil {
			a.logger.Warn("gossip shutdown", "error", err)
		}
	}()
	wg.Go(func() { a.health.Run(ctx) })
	a.logger.Info("agent starting", "node_id", a.nodeID, "name", a.cfg.Name, "api", apiLn.Addr().String(), "socket", a.cfg.SocketPath())
	if a.tls == nil {
		wg.Go(func() { a.insecureLoop(ctx.Done()) })
	}

	// The lease runs from the start: an agent that cannot register still
	// stops its VMs when it runs out.
	wg.Go(func() { a.isolationLoop(ctx) })
	if err := a.register(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	wg.Go(func() { a.gossipLoop(ctx) })
	wg.Go(func() { a.watchDesired(ctx) })
	wg.Go(func() {
		if err := a.rec.Run(ctx); err != nil {
			a.logger.Error("reconciler stopped", "error", err)
		}
	})
	wg.Go(func() { a.heartbeatLoop(ctx) })
	<-ctx.Done()
	a.logger.Info("agent stopping")
	return nil
}

func (a *Agent) setTiming(t api.Timing) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.HeartbeatInterval > 0 {
		a.timing = t
		a.noteMarginLocked(t.LeaseMargin)
	}
}

func (a *Agent) heartbeatInterval() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timing.HeartbeatInterval <= 0 {
		return defaultHeartbeatInterval
	}
	return a.timing.HeartbeatInterval
}

func (a *Agent) noteContact(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.contactErr = err
	if RegistrationLost(err) {
		a.registered = false
	}
	if err != nil && a.lostAt.IsZero() {
		a.lostAt = a.clock.Now()
	}
	var apiErr *api.Error
	if err == nil || errors.As(err, &apiErr) {
		// A server answered, even if it said no.
		a.lastContact = a.clock.Now()
	}
}

// noteSynced records a successful desired-state answer: the agent knows
// what the servers want of it as of now.
func (a *Agent) noteSynced() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.syncedAt, a.lostAt = a.clock.Now(), time.Time{}
}

// needResync reports whether the agent must sync again before it reports
// itself healthy (uniqueness rule 9): a request to the servers failed
// since its last successful desired-state answer, and that answer is at
// least one heartbeat interval old. A blocking query that is merely
// waiting with no failure around it keeps the agent in sync; a partition
// (every request fails) does not, whatever its length beyond an interval.
func (a *Agent) needResync() bool {
	interval := a.heartbeatInterval()
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.lostAt.IsZero() && a.clock.Now().Sub(a.syncedAt) >= interval
}

// RegistrationLost reports whether err says the servers do not know this
// node's credentials (its record was removed, or its secret is not the one
// they hold): the agent registers again. Run's loops branch on it; so does
// a caller that steps the agent.
func RegistrationLost(err error) bool {
	return errors.Is(err, structs.ErrForbidden) || errors.Is(err, structs.ErrNotFound)
}
