package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/server/hapolicy"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/server/recovery"
	"github.com/chime-ha/chime/chime/server/tasks"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/fsm/raftlog"
	"github.com/chime-ha/chime/gossip"
)

// Server is one running chime server.
type Server struct {
	cfg   Config
	log   hclog.Logger
	raft  *raft.Raft
	fsm   *fsm.FSM
	logs  *raftlog.Store // raft.db (term, vote) + raft-wal/ (the log)
	trans *raft.NetworkTransport
	pool  *gossip.Pool
	http  *http.Server
	lis   net.Listener
	fwd   *http.Client
	met   *metrics
	clock Clock // stamps commands; the duties and the endpoints run on it
	hb    *heartbeat.Monitor
	tls   *tlsconf.Material   // nil: plaintext (no --tls-* material)
	ep    *endpoint.Endpoints // what each request does, behind the handlers

	// The leader's deciding duties, each in its own package behind the
	// small interfaces it declares; constructed in Start, run by lead.
	placer     *placement.Placer   // placement lock, scheduler calls, pending VMs
	taskRunner *tasks.Runner       // migrate, evacuate, drain steps
	alarmer    *alarms.Alarmer     // alarm transitions and webhook delivery
	guard      *hapolicy.Guard     // automatic HA's arm switch and mass-failure brake
	recovery   *recovery.Recoverer // automatic HA and the fence command

	gossipMu    sync.Mutex         // guards the two fields below
	gossipCache []string           // servers' gossip addresses, for agents
	gossipAt    time.Time          // when gossipCache was read
	stopLoops   context.CancelFunc // stops bootstrap and leader loops
	wg          sync.WaitGroup
	stopOnce    sync.Once // Shutdown and Kill stop the server once

	routes    []routeDef                  // the route table, as setupHTTP declared it
	audit     *auditor                    // the audit log's writer (audit.go)
	refusedMu sync.Mutex                  // guards refusedAt
	refusedAt map[raft.ServerID]time.Time // when a would-be voter was last refused (tls.go)
	// readyTerm is the Raft term in which this server, as leader, passed
	// its barrier (every entry committed by earlier leaders applied); 0
	// when it has not. Agents' desired state is served only while it is
	// the current term (uniqueness rule 11).
	readyTerm atomic.Uint64
}

// Run starts a server and blocks until ctx ends, then shuts down cleanly.
// It returns an error when the server had to stop because its state
// machine halted.
func Run(ctx context.Context, cfg Config) error {
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return s.Wait(ctx)
}

// Wait blocks until ctx ends or the state machine halts, and then shuts
// the server down. A halted state machine applies no further log entry
// (fsm.FSM.Halted): serving reads from it, or leading with it, would let
// this replica drift silently from the others, so the server stops and
// Wait returns why.
func (s *Server) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return s.Shutdown()
	case <-s.fsm.Halted():
		err := s.fsm.Err()
		s.log.Error("shutting down: the state machine halted", "error", err)
		_ = s.Shutdown()
		return fmt.Errorf("server %s stopped: %w", s.cfg.Name, err)
	}
}

// Halted is closed when the state machine halted (see Wait); Err says why.
func (s *Server) Halted() <-chan struct{} { return s.fsm.Halted() }

// Err returns why the state machine halted, or nil while it runs.
func (s *Server) Err() error { return s.fsm.Err() }

// Start starts a server and returns once its listeners are up.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Dev {
		if cfg.Name == "" {
			cfg.Name = "dev"
		}
		if cfg.DataDir == "" {
			dir, err := os.MkdirTemp("", "chime-dev-")
			if err != nil {
				return nil, fmt.Errorf("dev data dir: %w", err)
			}
			cfg.DataDir = dir
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.Named("server"), fwd: &http.Client{Timeout: 6 * time.Minute}, clock: cfg.Clock}
	if s.clock == nil {
		s.clock = wallClock{}
	}
	s.met = newMetrics()
	if err := s.setupTLS(); err != nil {
		return nil, err
	}
	if err := s.setupRaft(); err != nil {
		s.closeStores()
		return nil, err
	}
	if err := s.setupGossip(ctx); err != nil {
		s.closeAll()
		return nil, err
	}
	if err := s.setupDuties(); err != nil {
		s.closeAll()
		return nil, err
	}
	if err := s.setupHTTP(); err != nil {
		s.closeAll()
		return nil, err
	}
	if s.aclEnabled() {
		s.log.Info("ACLs enforced: every route needs a token of its role (docs/security.md); a new cluster is bootstrapped once with `chime acl bootstrap`")
	} else {
		s.log.Info("ACLs off: no route checks a token", "dev", cfg.Dev)
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	s.stopLoops = cancel
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.bootstrapLoop(loopCtx) }()
	go func() { defer s.wg.Done(); s.leaderLoop(loopCtx) }()
	hbTimeout := s.raft.ReloadableConfig().HeartbeatTimeout
	go func() { defer s.wg.Done(); s.leaderWatch(loopCtx, hbTimeout) }()
	if s.tls == nil && !cfg.Dev {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.insecureLoop(loopCtx.Done()) }()
	}
	s.log.Info("server started", "name", cfg.Name, "api", cfg.APIURL(), "raft", cfg.RaftAddr(),
		"gossip", s.pool.LocalAddr(), "data_dir", cfg.DataDir)
	return s, nil
}

// raftLogCache is how many of the newest Raft entries the log cache keeps (as Nomad does).
const raftLogCache = 512

func (s *Server) setupRaft() error {
	cfg := s.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	var err error
	if s.logs, err = raftlog.Open(cfg.DataDir, s.log.Named("raftlog")); err != nil {
		return fmt.Errorf("raft log: %w", err)
	}
	if s.fsm, err = fsm.Open(filepath.Join(cfg.DataDir, "state.db"), s.log.Named("fsm")); err != nil {
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.DataDir, "snapshots"), 3, s.log.Named("raft"))
	if err != nil {
		return fmt.Errorf("snapshot store: %w", err)
	}
	bind := net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.RaftPort))
	adv, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr())
	if err != nil {
		return fmt.Errorf("raft advertise address: %w", err)
	}
	if s.tls != nil {
		s.trans, err = s.newTLSTransport(bind, adv)
	} else {
		s.trans, err = raft.NewTCPTransportWithLogger(bind, adv, 3, 10*time.Second, s.log.Named("raft.transport"))
	}
	if err != nil {
		return fmt.Errorf("raft transport on %s: %w", bind, err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.Logger = s.log.Named("raft")
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = 10240
	rc.CommitTimeout = raftCommitTimeout // not scaled: it is no election timer, and shorter only costs CPU
	if cfg.RaftTimeScale < 1 {
		sc := func(d time.Duration) time.Duration { return time.Duration(float64(d) * cfg.RaftTimeScale) }
		rc.HeartbeatTimeout = sc(rc.HeartbeatTimeout)
		rc.ElectionTimeout = sc(rc.ElectionTimeout)
		rc.LeaderLeaseTimeout = sc(rc.LeaderLeaseTimeout)
	}
	// The leader reads every new entry back once per follower to replicate it; the last
	// raftLogCache entries are served from memory instead of a pread and decode each.
	logs, err := raft.NewLogCache(raftLogCache, s.logs)
	if err != nil {
		return fmt.Errorf("raft log cache: %w", err)
	}
	if s.raft, err = raft.NewRaft(rc, s.fsm, logs, s.logs, snaps, s.trans); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	return nil
}

func (s *Server) setupGossip(ctx context.Context) error {
	dir := s.cfg.DataDir
	if s.cfg.Dev {
		dir = "" // --dev keeps no keyring file
	}
	keys, ignored, err := gossip.ResolveKeys(dir, s.cfg.GossipKey)
	if err != nil {
		return err
	}
	if ignored {
		s.log.Warn("--gossip-key is not in the keyring file; the keyring file wins (rotate with 'chime operator gossip keyring')", "file", filepath.Join(dir, gossip.KeyringFile))
	}
	var key []byte
	var extra [][]byte
	if len(keys) > 0 {
		key, extra = keys[0], keys[1:]
	} else if !s.cfg.Dev {
		s.log.Warn("gossip is not encrypted (--insecure-no-gossip-key)")
	}
	s.pool, err = gossip.Start(ctx, gossip.Config{
		Name:     s.cfg.Name,
		BindAddr: s.cfg.Bind, BindPort: s.cfg.GossipPort,
		AdvertiseAddr: s.cfg.AdvertiseAddr(), AdvertisePort: s.cfg.GossipPort,
		Key: key, ExtraKeys: extra, KeyringDir: dir,
		Meta:    map[string]string{"role": "server", "api": s.cfg.APIURL(), "raft": s.cfg.RaftAddr(), "id": s.cfg.Name},
		Profile: s.cfg.GossipProfile,
		Logger:  s.log,
	})
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	if len(s.cfg.Join) > 0 {
		// Joining is retried by the bootstrap loop; a first failure is normal
		// while the other servers are still starting.
		if _, err := s.pool.Join(ctx, s.cfg.Join); err != nil {
			s.log.Warn("gossip join failed, will retry", "error", err)
		}
	}
	return nil
}

// bootstrapLoop forms a new cluster once --bootstrap-expect servers see each
// other, and keeps retrying --join until the pool has the other servers.
func (s *Server) bootstrapLoop(ctx context.Context) {
	if s.cfg.Dev {
		s.bootstrap([]raft.Server{{ID: raft.ServerID(s.cfg.Name), Address: raft.ServerAddress(s.cfg.RaftAddr())}})
		return
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		servers := s.pool.Servers()
		if len(s.cfg.Join) > 0 && len(servers) < max(2, s.cfg.BootstrapExpect) {
			_, _ = s.pool.Join(ctx, s.cfg.Join)
			continue
		}
		if s.cfg.BootstrapExpect == 0 {
			return
		}
		has, err := raft.HasExistingState(s.logs, s.logs, s.snapshotStore())
		if err != nil || has || s.raft.Leader() != "" {
			return
		}
		if len(servers) < s.cfg.BootstrapExpect {
			continue
		}
		var conf []raft.Server
		for _, m := range servers {
			conf = append(conf, raft.Server{ID: raft.ServerID(m.Meta["id"]), Address: raft.ServerAddress(m.Meta["raft"])})
		}
		sort.Slice(conf, func(i, j int) bool { return conf[i].ID < conf[j].ID })
		s.bootstrap(conf)
		return
	}
}

func (s *Server) snapshotStore() raft.SnapshotStore {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(s.cfg.DataDir, "snapshots"), 3, hclog.NewNullLogger())
	if err != nil {
		return raft.NewInmemSnapshotStore()
	}
	return snaps
}

func (s *Server) bootstrap(conf []raft.Server) {
	err := s.raft.BootstrapCluster(raft.Configuration{Servers: conf}).Error()
	switch {
	case err == nil:
		s.log.Info("bootstrapped a new cluster", "servers", len(conf))
	case errors.Is(err, raft.ErrCantBootstrap):
		s.log.Debug("cluster already bootstrapped")
	default:
		s.log.Error("bootstrap failed", "error", err)
	}
}

// Shutdown stops the server: HTTP first, then loops, gossip and Raft. A
// second call (or one after Kill) does nothing.
func (s *Server) Shutdown() error {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.http.Shutdown(ctx)
		if s.stopLoops != nil {
			s.stopLoops()
		}
		s.wg.Wait()
		s.closeAll()
		s.log.Info("server stopped")
	})
	return nil
}

func (s *Server) closeAll() {
	if s.pool != nil {
		_ = s.pool.Leave(time.Second)
		_ = s.pool.Shutdown()
	}
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			s.log.Warn("raft shutdown", "error", err)
		}
	}
	if s.trans != nil {
		_ = s.trans.Close()
	}
	s.closeStores()
}

func (s *Server) closeStores() {
	if s.logs != nil {
		_ = s.logs.Close()
	}
	if s.fsm != nil {
		_ = s.fsm.Close()
	}
}

// Kill stops the server abruptly (tests: simulates a crash as far as
// in-process allows: no graceful leave, no final snapshot).
func (s *Server) Kill() {
	s.stopOnce.Do(func() {
		_ = s.http.Close()
		if s.stopLoops != nil {
			s.stopLoops()
		}
		s.wg.Wait()
		_ = s.pool.Shutdown()
		_ = s.raft.Shutdown().Error()
		_ = s.trans.Close()
		s.closeStores()
	})
}

// Raft exposes the Raft instance (tests, operator endpoints).
func (s *Server) Raft() *raft.Raft { return s.raft }

// FSM exposes the state machine (tests).
func (s *Server) FSM() *fsm.FSM { return s.fsm }

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }

// IsLeader reports whether this server is the Raft leader.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// leaderAPI returns the API URL of the current leader, from gossip.
func (s *Server) leaderAPI() (string, error) {
	addr, id := s.raft.LeaderWithID()
	if addr == "" {
		return "", fmt.Errorf("%w: no leader elected", structs.ErrNoLeader)
	}
	if string(id) == s.cfg.Name {
		return s.cfg.APIURL(), nil
	}
	for _, m := range s.pool.Members() {
		if m.Meta["role"] == "server" && (m.Meta["id"] == string(id) || m.Meta["raft"] == string(addr)) && m.Meta["api"] != "" {
			return m.Meta["api"], nil
		}
	}
	return "", fmt.Errorf("%w: leader %s has no known API address", structs.ErrNoLeader, id)
}

// propose applies a command through Raft on the leader, stamped with the
// server's clock. Followers answer errNotLeader: the HTTP layer forwards
// the whole request instead.
func (s *Server) propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	if reqID == "" {
		reqID = api.NewRequestID()
	}
	data, err := fsm.NewCommand(reqID, typ, s.clock.Now(), payload)
	if err != nil {
		return nil, err
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := s.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return nil, fmt.Errorf("%w: %v", errNotLeader, err)
		}
		return nil, fmt.Errorf("raft apply: %w", err)
	}
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("raft apply: unexpected response %T", f.Response())
	}
	s.met.applied.WithLabelValues(string(typ)).Inc()
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

var errNotLeader = fmt.Errorf("%w: not the leader", structs.ErrNoLeader)
