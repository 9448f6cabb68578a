package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/agent/health"
	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/agent/reconcile"
	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/gossip"
	"github.com/hashicorp/go-hclog"
)

const (
	defaultHeartbeatInterval = 15 * time.Second
	desiredWait              = 30 * time.Second
	maxBackoff               = 30 * time.Second
	faultLibvirt             = "libvirtd unreachable"
)

// Hypervisor is the part of the libvirt driver the agent uses: what the
// reconciler and the HA operations call, plus what registration and the
// heartbeat read. *hypervisor.Driver implements it.
type Hypervisor interface {
	reconcile.Hypervisor
	handover.Hypervisor
	Connected() bool
	Capacity(ctx context.Context) (vcpus, memMiB int, err error)
}

// Agent is one running agent. New opens its local state; Run drives it.
type Agent struct {
	cfg    Config
	hv     Hypervisor
	store  *store.Store
	client *api.Client
	rec    *reconcile.Reconciler
	ops    *handover.Manager // migrations, local drain, adoptions, fencing holds
	health *health.Checker   // local health checks; their faults go into every heartbeat
	nodeID string
	logger hclog.Logger

	mu          sync.Mutex
	desired     *api.DesiredState // last accepted desired state (nil before the first sync of this process); replaced, never mutated
	hold        []string          // VM ids whose instruction was refused by the fencing rule
	timing      api.Timing        // from the servers
	lastContact time.Time         // last successful answer from a server
	contactErr  error             // error of the last request to the servers (nil: it succeeded)
	apiAddr     net.Addr          // where the agent API listens
	gossipAddrs []string          // the servers' memberlist addresses, from registration and heartbeats

	pool *gossip.Pool // set by Run before registration

	heartbeatNow chan struct{} // capacity 1: send the next heartbeat early
}

// New opens the agent's local state in cfg.DataDir and wires the reconciler
// and the HA operations to hv. The caller owns hv.
func New(cfg Config, hv Hypervisor) (*Agent, error) {
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
	id, err := st.NodeID()
	if err != nil {
		st.Close()
		return nil, err
	}
	drained, err := st.Drained()
	if err != nil {
		st.Close()
		return nil, err
	}
	a := &Agent{cfg: cfg, hv: hv, store: st, nodeID: id, logger: cfg.Logger,
		client:       api.NewClient(cfg.Servers...),
		timing:       api.Timing{HeartbeatInterval: defaultHeartbeatInterval},
		heartbeatNow: make(chan struct{}, 1)}
	a.rec, err = reconcile.New(reconcile.Config{
		Hypervisor: hv, Definitions: st, Inputs: a.reconcileInputs,
		SweepInterval: cfg.SweepInterval, ShutdownGrace: cfg.ShutdownGrace,
		Logger:  cfg.Logger.Named("reconciler"),
		Changed: a.requestHeartbeat,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	a.ops = handover.New(handover.Config{
		NodeID: id, Hypervisor: hv, Store: st, Reporter: a.client,
		Announcer:     peerClient{port: cfg.APIPort},
		ShutdownGrace: cfg.ShutdownGrace, Drained: drained,
		Trigger: a.rec.Trigger, Changed: a.requestHeartbeat,
		Logger: cfg.Logger.Named("handover"),
	})
	a.health = health.New(cfg.healthConfig(a.requestHeartbeat))
	return a, nil
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
	a.mu.Lock()
	ds, refused := a.desired, slices.Clone(a.hold)
	a.mu.Unlock()
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
	}{{apiLn, a.apiHandler()}, {sockLn, local.Handler(localBackend{a})}} {
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

// register registers the node, retrying with back-off until it succeeds or
// ctx ends, and keeps the secret the servers issue.
func (a *Agent) register(ctx context.Context) error {
	log := a.logger.Named("register")
	for attempt := 0; ; attempt++ {
		err := a.registerOnce(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := backoff(attempt)
		log.Warn("registration failed; retrying", "error", err, "in", d.String())
		if !sleepCtx(ctx, d) {
			return ctx.Err()
		}
	}
}

func (a *Agent) registerOnce(ctx context.Context) error {
	vcpus, mem, err := a.hv.Capacity(ctx)
	if err != nil {
		return fmt.Errorf("capacity from libvirt: %w", err)
	}
	secret, err := a.store.Secret()
	if err != nil {
		return err
	}
	if secret == "" {
		// The agent makes its own secret and persists it before the first
		// registration, so that a retried registration (answer lost) is
		// idempotent: the servers store its hash once.
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("node secret: %w", err)
		}
		secret = hex.EncodeToString(b[:])
		if err := a.store.SetSecret(secret); err != nil {
			return err
		}
	}
	adv := a.cfg.AdvertiseAddr()
	migAddr := a.cfg.MigrationAddr
	if migAddr == "" {
		migAddr = adv
	}
	req := api.RegisterRequest{
		ID: a.nodeID, Name: a.cfg.Name, Secret: secret,
		APIAddr:           a.apiAdvertised(),
		GossipAddr:        a.gossipAdvertised(),
		MigrationURI:      handover.LibvirtURI(adv),
		MigrationAddr:     migAddr,
		BusinessInterface: a.cfg.BusinessInterface,
		VCPUs:             vcpus, MemoryMiB: mem,
		Labels:       a.cfg.Labels,
		AgentVersion: structs.Version,
	}
	a.client.Node, a.client.Secret = "", ""
	resp, err := a.client.Register(ctx, req)
	a.noteContact(err)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if resp.NodeID != "" && resp.NodeID != a.nodeID {
		return fmt.Errorf("register: servers answered for node %s, not %s", resp.NodeID, a.nodeID)
	}
	if resp.Secret != "" && resp.Secret != secret {
		if err := a.store.SetSecret(resp.Secret); err != nil {
			return err
		}
		secret = resp.Secret
	}
	a.client.Node, a.client.Secret = a.nodeID, secret
	a.setTiming(resp.Timing)
	a.setGossipAddrs(resp.GossipAddrs)
	a.logger.Info("registered", "node_id", a.nodeID, "vcpus", vcpus, "memory_mib", mem,
		"heartbeat_interval", a.heartbeatInterval().String())
	return nil
}

// watchDesired follows the node's desired state with blocking queries,
// persisting each new state and triggering the reconciler.
func (a *Agent) watchDesired(ctx context.Context) {
	log := a.logger.Named("desired")
	var index uint64 // 0: the first query answers at once
	for attempt := 0; ctx.Err() == nil; {
		ds, err := a.client.Desired(ctx, api.QueryOptions{Index: index, Wait: desiredWait})
		if ctx.Err() != nil {
			return
		}
		a.noteContact(err)
		if err != nil {
			if errors.Is(err, structs.ErrForbidden) || errors.Is(err, structs.ErrNotFound) {
				log.Warn("servers do not accept this node's credentials; registering again", "error", err)
				if a.register(ctx) != nil {
					return
				}
			}
			d := backoff(attempt)
			attempt++
			log.Warn("desired-state query failed; keeping the last one", "error", err, "retry_in", d.String())
			if !sleepCtx(ctx, d) {
				return
			}
			continue
		}
		attempt = 0
		if index != 0 && ds.Index <= index {
			continue // wait expired, or a lagging server answered: nothing new
		}
		if err := a.acceptDesired(ctx, *ds); err != nil {
			log.Error("cannot persist desired state", "error", err)
			if !sleepCtx(ctx, backoff(0)) {
				return
			}
			continue
		}
		index = ds.Index
	}
}

// acceptDesired applies the fencing rule, persists the state, runs the HA
// side effects and triggers a reconcile pass.
func (a *Agent) acceptDesired(ctx context.Context, ds api.DesiredState) error {
	accepted, refused, hold, err := a.store.AcceptDesired(ds)
	if err != nil {
		return err
	}
	for _, vm := range refused {
		seen, err := a.store.SeenGeneration(vm.ID)
		if err != nil {
			a.logger.Warn("refusing instruction with an older generation", "vm", vm.ID, "generation", vm.Generation, "seen_error", err)
			continue
		}
		a.logger.Warn("refusing instruction with an older generation", "vm", vm.ID, "generation", vm.Generation, "seen", seen)
	}
	a.mu.Lock()
	first := a.desired == nil
	a.desired = &accepted
	a.hold = hold
	a.mu.Unlock()
	if first {
		a.logger.Info("first sync with the servers", "index", accepted.Index, "vms", len(accepted.VMs))
	} else {
		a.logger.Debug("desired state changed", "index", accepted.Index, "vms", len(accepted.VMs))
	}
	a.ops.AfterDesired(ctx, accepted)
	a.rec.Trigger()
	return nil
}

func (a *Agent) setTiming(t api.Timing) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.HeartbeatInterval > 0 {
		a.timing = t
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
	var apiErr *api.Error
	if err == nil || errors.As(err, &apiErr) {
		// A server answered, even if it said no.
		a.lastContact = time.Now()
	}
}

func backoff(attempt int) time.Duration {
	d := time.Second << min(attempt, 5)
	return min(d, maxBackoff)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
