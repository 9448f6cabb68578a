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

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/gossip"
	"github.com/chime-ha/chime/hypervisor"
	"github.com/hashicorp/go-hclog"
)

const (
	defaultHeartbeatInterval = 15 * time.Second
	desiredWait              = 30 * time.Second
	maxBackoff               = 30 * time.Second
	faultLibvirt             = "libvirtd unreachable"
)

// Agent is one running agent. New opens its local state; Run drives it.
type Agent struct {
	cfg    Config
	hv     Hypervisor
	store  *Store
	client *api.Client
	rec    *Reconciler
	nodeID string
	logger hclog.Logger

	mu          sync.Mutex
	desired     *api.DesiredState // last accepted desired state (nil before the first sync of this process)
	hold        []string          // VM ids whose instruction was refused by the fencing rule
	timing      api.Timing        // from the servers
	drained     bool              // local drain flag (mirrors the store)
	lastContact time.Time         // last successful answer from a server
	contactErr  error             // error of the last request to the servers (nil: it succeeded)
	apiAddr     net.Addr          // where the agent API listens
	gossipAddrs []string          // the servers' memberlist addresses, from registration and heartbeats

	mig    *migrations     // live migrations ordered by the servers
	runCtx context.Context // Run's context: owns background migrations
	pool   *gossip.Pool    // set by Run before registration
	health *Health         // local health checks; their faults go into every heartbeat

	heartbeatNow chan struct{} // capacity 1: send the next heartbeat early
}

// New opens the agent's local state in cfg.DataDir and wires the reconciler
// to hv. The caller owns hv.
func New(cfg Config, hv Hypervisor) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	store, err := OpenStore(filepath.Join(cfg.DataDir, stateFile))
	if err != nil {
		return nil, err
	}
	id, err := store.NodeID()
	if err != nil {
		store.Close()
		return nil, err
	}
	drained, err := store.Drained()
	if err != nil {
		store.Close()
		return nil, err
	}
	a := &Agent{cfg: cfg, hv: hv, store: store, nodeID: id, logger: cfg.Logger, drained: drained,
		client:       api.NewClient(cfg.Servers...),
		timing:       api.Timing{HeartbeatInterval: defaultHeartbeatInterval},
		heartbeatNow: make(chan struct{}, 1), mig: newMigrations(), runCtx: context.Background()}
	if err := store.ensureHABuckets(); err != nil {
		store.Close()
		return nil, err
	}
	a.rec, err = NewReconciler(ReconcilerConfig{
		Hypervisor: hv, Store: store, Inputs: a.reconcileInputs,
		SweepInterval: cfg.SweepInterval, ShutdownGrace: cfg.ShutdownGrace,
		Logger:  cfg.Logger.Named("reconciler"),
		Changed: a.requestHeartbeat,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	a.health = NewHealth(cfg.healthConfig(a.requestHeartbeat))
	return a, nil
}

// Close closes the local state.
func (a *Agent) Close() error { return a.store.Close() }

// NodeID is the node id this agent registers with.
func (a *Agent) NodeID() string { return a.nodeID }

// Reconciler returns the agent's reconciler.
func (a *Agent) Reconciler() *Reconciler { return a.rec }

// APIAddr is where the agent API listens (nil before Run has bound it).
func (a *Agent) APIAddr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.apiAddr
}

// reconcileInputs feeds the reconciler. Until the first successful sync of
// this process it reports !ok: a restarted agent starts nothing on the
// strength of a desired state persisted before it went away.
func (a *Agent) reconcileInputs() (Inputs, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.desired == nil {
		return Inputs{}, false
	}
	return Inputs{
		Desired: slices.Clone(a.desired.VMs),
		// A node drained by the servers keeps its VMs stopped as well.
		Drained: a.drained || a.desired.ManagementState == structs.NodeDrained,
		Hold:    append(slices.Clone(a.hold), a.haHold(a.desired)...),
	}, true
}

// Run serves the agent API and the local socket, registers, then runs the
// desired-state watch, the reconciler and the heartbeats until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer a.mig.wg.Wait()
	a.runCtx = ctx

	apiLn, err := net.Listen("tcp", net.JoinHostPort(a.cfg.Bind, strconv.Itoa(a.cfg.APIPort)))
	if err != nil {
		return fmt.Errorf("--api-port: listen: %w", err)
	}
	a.mu.Lock()
	a.apiAddr = apiLn.Addr()
	a.mu.Unlock()
	sockLn, err := listenUnix(a.cfg.SocketPath())
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("--socket: %w", err)
	}
	for _, srv := range []struct {
		ln net.Listener
		h  http.Handler
	}{{apiLn, a.apiHandler()}, {sockLn, a.localHandler()}} {
		hs := &http.Server{Handler: srv.h, ReadHeaderTimeout: 10 * time.Second}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := hs.Serve(srv.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.logger.Error("listener failed", "addr", srv.ln.Addr().String(), "error", err)
			}
		}()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			_ = hs.Shutdown(sctx)
		}()
	}
	pool, err := a.startGossip(ctx)
	if err != nil {
		return fmt.Errorf("--gossip-port: %w", err)
	}
	a.pool = pool
	defer func() {
		_ = pool.Leave(time.Second)
		_ = pool.Shutdown()
	}()
	wg.Go(func() { a.health.Run(ctx) })
	a.logger.Info("agent starting", "node_id", a.nodeID, "name", a.cfg.Name, "api", apiLn.Addr().String(), "socket", a.cfg.SocketPath())

	if err := a.register(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	wg.Add(4)
	go func() { defer wg.Done(); a.gossipLoop(ctx) }()
	go func() { defer wg.Done(); a.watchDesired(ctx) }()
	go func() { defer wg.Done(); _ = a.rec.Run(ctx) }()
	go func() { defer wg.Done(); a.heartbeatLoop(ctx) }()
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
		MigrationURI:      "qemu+tcp://" + hostForURI(adv) + "/system",
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
		if err := a.acceptDesired(*ds); err != nil {
			log.Error("cannot persist desired state", "error", err)
			if !sleepCtx(ctx, backoff(0)) {
				return
			}
			continue
		}
		index = ds.Index
	}
}

// acceptDesired applies the fencing rule, persists the state and triggers
// a reconcile pass.
func (a *Agent) acceptDesired(ds api.DesiredState) error {
	accepted, refused, hold, err := a.store.AcceptDesired(ds)
	if err != nil {
		return err
	}
	for _, vm := range refused {
		seen, _ := a.store.SeenGeneration(vm.ID)
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
	a.afterDesired(a.runCtx, accepted)
	a.rec.Trigger()
	return nil
}

// heartbeatLoop sends heartbeats, but only once the reconciler has settled:
// a returning node must have destroyed its stale copies before the heartbeat
// that may bring it back to normal (uniqueness rule 2).
func (a *Agent) heartbeatLoop(ctx context.Context) {
	log := a.logger.Named("heartbeat")
	select {
	case <-ctx.Done():
		return
	case <-a.rec.Settled():
	}
	log.Info("first reconcile pass done: heartbeats begin")
	for {
		if err := a.sendHeartbeat(ctx); err != nil && ctx.Err() == nil {
			log.Warn("heartbeat failed", "error", err)
			if errors.Is(err, structs.ErrForbidden) || errors.Is(err, structs.ErrNotFound) {
				if a.register(ctx) != nil {
					return
				}
			}
		}
		t := time.NewTimer(a.heartbeatInterval())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-a.heartbeatNow:
			t.Stop()
		}
	}
}

// requestHeartbeat asks for the next heartbeat now (after libvirt changed),
// so that the servers' view of the VMs converges quickly. Requests coalesce.
func (a *Agent) requestHeartbeat() {
	select {
	case a.heartbeatNow <- struct{}{}:
	default:
	}
}

// BuildHeartbeat assembles a heartbeat from libvirt's state and the local
// state; it returns the sequence of the last reported local migration.
func (a *Agent) BuildHeartbeat(ctx context.Context) (api.HeartbeatRequest, uint64, error) {
	a.mu.Lock()
	hb := api.HeartbeatRequest{NodeID: a.nodeID, LocalDrained: a.drained, VMs: []structs.VMObservation{}}
	a.mu.Unlock()
	if hb.LocalDrained {
		hb.LocalDrainID, _ = a.store.DrainID()
	}
	domains, err := a.hv.List(ctx)
	if err != nil || !a.hv.Connected() {
		hb.Faults = append(hb.Faults, faultLibvirt)
		hb.VMsUnknown = err != nil
	}
	hb.Faults = append(hb.Faults, a.health.Faults()...)
	for _, d := range domains {
		if d.Meta == nil {
			continue
		}
		hb.VMs = append(hb.VMs, structs.VMObservation{VMID: d.UUID, State: observedState(d.State), Reason: d.Reason, Generation: d.Meta.Generation})
	}
	hb.Adopted = a.adoptedObservations(domains)
	migs, last, err := a.store.PendingMigrations()
	if err != nil {
		return hb, 0, err
	}
	hb.Migrations = migs
	return hb, last, nil
}

func (a *Agent) sendHeartbeat(ctx context.Context) error {
	hb, lastMig, err := a.BuildHeartbeat(ctx)
	if err != nil {
		return err
	}
	resp, err := a.client.Heartbeat(ctx, hb)
	a.noteContact(err)
	if err != nil {
		return err
	}
	a.setTiming(resp.Timing)
	a.setGossipAddrs(resp.GossipAddrs)
	a.rejectAdoptions(resp.RejectedAdoptions)
	if len(hb.Migrations) > 0 {
		if err := a.store.AckMigrations(lastMig); err != nil {
			return fmt.Errorf("ack local migrations: %w", err)
		}
	}
	a.logger.Named("heartbeat").Debug("heartbeat sent", "vms", len(hb.VMs), "faults", len(hb.Faults))
	return nil
}

// observedState maps a libvirt state onto the API's observation states. A
// domain in a transitional state may still have a qemu process: it counts
// as running, so the servers never believe a VM gone while it is not.
func observedState(s string) string {
	switch s {
	case hypervisor.StateStopped:
		return structs.StateStopped
	case hypervisor.StateCrashed:
		return structs.StateCrashed
	}
	return structs.StateRunning
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

func hostForURI(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "[" + host + "]"
	}
	return host
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
