package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// The servers and the ideal committed log that stands in for Raft.
//
// hashicorp/raft is a library, not chime's decision code, so the
// simulator replaces it with the world's ideal log: one sequence of
// committed entries. The leader's proposals commit only while a majority
// of the servers is up and reachable from the leader both ways on the
// management network; a committed entry applies, in order, to every up
// server that is connected to the leader, and a lagging server catches up
// (from the leader's snapshot when it has one past the server's index,
// then from the log) when it reconnects. Elections: a leader that lost its
// majority, or went down, steps down at the next election tick; after the
// election timeout a new leader is chosen with the seeded random source
// among the up servers that have a majority, applies everything committed
// (the barrier) and constructs fresh duties over its own FSM. Each server
// has a real *fsm.FSM in a directory of its own; a restart reopens it empty
// and rebuilds it from its latest snapshot and its log, as production
// does.

// electionTick is how often leadership is checked.
const electionTick = 500 * time.Millisecond

// snapshotEvery is how many entries a leader applies between automatic
// snapshots (small, so that restores and snapshot catch-ups happen often).
const snapshotEvery = 200

// errNoQuorum is a proposal that cannot commit: the leader reaches no
// majority.
var errNoQuorum = errors.New("raft apply: timed out: the leader reaches no majority")

// errNotLeader is what production's propose returns off the leader.
var errNotLeader = fmt.Errorf("%w: not the leader", structs.ErrNoLeader)

// entry is one committed log entry.
type entry struct {
	term uint64
	typ  fsm.CommandType
	data []byte
}

// ClusterConfig sets the servers' timing.
type ClusterConfig struct {
	Servers           int           // default 3
	HeartbeatInterval time.Duration // default 15 s (production default)
	MissedHeartbeats  int           // default 3
	ElectionTimeout   time.Duration // default 1 s
	Dir               string        // where the servers' state files live; required
}

func (c *ClusterConfig) defaults() {
	if c.Servers == 0 {
		c.Servers = 3
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 15 * time.Second
	}
	if c.MissedHeartbeats == 0 {
		c.MissedHeartbeats = 3
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = time.Second
	}
}

// Cluster is the simulated servers and their committed log.
type Cluster struct {
	sim     *Sim
	cfg     ClusterConfig
	Servers []*Server
	log     []entry // committed entries; entry i has index i+1
	term    uint64
	leader  *Server
	// leaderless is when the cluster last had no leader (the election
	// timeout counts from it).
	leaderless time.Time
	// elected is when the current (or last) leader was elected: what it
	// knows of the nodes is what was committed before, plus what it heard
	// since.
	elected time.Time
}

// snapshot is a server's latest snapshot: a bbolt image and its index.
type snapshot struct {
	index uint64
	data  []byte
}

// Server is one simulated chime server.
type Server struct {
	c       *Cluster
	Name    string
	up      bool
	path    string // the FSM's state file
	FSM     *fsm.FSM
	applied uint64
	skew    time.Duration // its wall clock minus simulated time
	snap    *snapshot
	lead    *leaderDuties // while leader
	log     hclog.Logger
	halted  error // the FSM halted: the server stopped (production exits)
}

func newCluster(s *Sim, cfg ClusterConfig) (*Cluster, error) {
	cfg.defaults()
	c := &Cluster{sim: s, cfg: cfg, leaderless: s.E.Now()}
	for i := 1; i <= cfg.Servers; i++ {
		name := fmt.Sprintf("s%d", i)
		srv := &Server{c: c, Name: name, up: true, path: filepath.Join(cfg.Dir, name, "state.db"),
			log: s.logger(name)}
		f, err := fsm.Open(srv.path, srv.log.Named("fsm"))
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", name, err)
		}
		srv.FSM = f
		c.Servers = append(c.Servers, srv)
		s.Net.Listen(name, srv.listening)
	}
	s.E.Every(electionTick, electionTick, "", c.electionCheck)
	return c, nil
}

func (s *Server) listening() error {
	if !s.up {
		return ErrTimeout // a dead machine, from the caller's side: no answer
	}
	return nil
}

// Up reports whether the server runs.
func (s *Server) Up() bool { return s.up }

// Addr is the server's address (10.0.0.i for si).
func (s *Server) Addr() string {
	i := 0
	fmt.Sscanf(s.Name, "s%d", &i)
	return fmt.Sprintf("10.0.0.%d", i)
}

// IsLeader reports whether the server is the current leader.
func (s *Server) IsLeader() bool { return s.c.leader == s }

// Applied is the server's last applied index.
func (s *Server) Applied() uint64 { return s.applied }

// Now is the server's wall clock.
func (s *Server) Now() time.Time { return s.c.sim.E.Now().Add(s.skew) }

// clock is the server's wall clock as the duties' Clock interfaces want it.
func (s *Server) clock() skewedClock { return skewedClock{w: s.c.sim.E, skew: &s.skew} }

// Leader returns the current leader, or nil.
func (c *Cluster) Leader() *Server { return c.leader }

// Server returns a server by name, or nil.
func (c *Cluster) Server(name string) *Server {
	for _, s := range c.Servers {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// CommitIndex is the index of the last committed entry.
func (c *Cluster) CommitIndex() uint64 { return uint64(len(c.log)) }

// connected reports whether two up servers reach each other both ways.
func (c *Cluster) connected(a, b *Server) bool {
	return a.up && b.up && c.sim.Net.BothWays(a.Name, b.Name, Mgmt)
}

// quorum reports whether s reaches a majority (itself included).
func (c *Cluster) quorum(s *Server) bool {
	if !s.up {
		return false
	}
	n := 0
	for _, o := range c.Servers {
		if o == s || c.connected(s, o) {
			n++
		}
	}
	return n > len(c.Servers)/2
}

// electionCheck is the election tick: a leader without a majority steps
// down; after the election timeout without a leader, one is elected.
func (c *Cluster) electionCheck() {
	w := c.sim.E
	if l := c.leader; l != nil {
		if c.quorum(l) {
			c.replicate()
			return
		}
		c.stepDown("lost its majority")
	}
	if w.Now().Sub(c.leaderless) < c.cfg.ElectionTimeout {
		return
	}
	var candidates []*Server
	for _, s := range c.Servers {
		if c.quorum(s) {
			candidates = append(candidates, s)
		}
	}
	if len(candidates) == 0 {
		return
	}
	pick := candidates[0]
	if len(candidates) > 1 {
		pick = candidates[w.rand.IntN(len(candidates))]
	}
	c.elect(pick)
}

// stepDown ends the current leader's term: its duties stop and their
// memory is gone.
func (c *Cluster) stepDown(why string) {
	l := c.leader
	if l == nil {
		return
	}
	c.sim.E.trace.Addf("raft", "%s steps down (term %d): %s", l.Name, c.term, why)
	if l.lead != nil {
		l.lead.stop()
		l.lead = nil
	}
	c.leader = nil
	c.leaderless = c.sim.E.Now()
}

// elect makes s the leader of a new term. A candidate with a majority has
// every committed entry in its log (Raft's election rule), so the barrier
// is: apply everything committed, then start the duties.
func (c *Cluster) elect(s *Server) {
	c.term++
	c.leader = s
	c.elected = c.sim.E.Now()
	c.sim.E.trace.Addf("raft", "%s elected leader (term %d, commit index %d)", s.Name, c.term, c.CommitIndex())
	c.catchUp(s, nil)
	c.replicate()
	if c.leader != s { // the FSM halted during the barrier
		return
	}
	s.lead = newLeaderDuties(s, c.term)
}

// TransferLeadership makes the leader step down at once (raft's leadership
// transfer); the next election tick picks a leader among the others that
// have a majority when there are any.
func (c *Cluster) TransferLeadership() {
	old := c.leader
	c.stepDown("leadership transfer")
	if old == nil {
		return
	}
	var candidates []*Server
	for _, s := range c.Servers {
		if s != old && c.quorum(s) {
			candidates = append(candidates, s)
		}
	}
	if len(candidates) == 0 {
		return
	}
	c.elect(candidates[c.sim.E.rand.IntN(len(candidates))])
}

// propose commits one command proposed by s, and returns s's result of
// applying it, as raft.Apply and its future's Response do.
func (c *Cluster) propose(s *Server, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	if c.leader != s || s.lead == nil || !s.up {
		return nil, errNotLeader
	}
	if !c.quorum(s) {
		return nil, errNoQuorum
	}
	if reqID == "" {
		reqID = c.sim.E.ID()
	}
	data, err := fsm.NewCommand(reqID, typ, s.Now(), payload)
	if err != nil {
		return nil, err
	}
	c.log = append(c.log, entry{term: c.term, typ: typ, data: data})
	index := uint64(len(c.log))
	c.sim.E.trace.Addf("raft", "commit %d %s by %s", index, typ, s.Name)
	res := s.applyNext()
	c.replicate()
	if c.leader == s {
		c.sim.afterCommit(s, index)
	}
	if res == nil {
		return nil, fmt.Errorf("raft apply: server %s stopped: %w", s.Name, s.halted)
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// replicate brings every up server connected to the leader up to the
// commit index.
func (c *Cluster) replicate() {
	l := c.leader
	if l == nil {
		return
	}
	for _, s := range c.Servers {
		if s != l && s.applied < c.CommitIndex() && c.connected(l, s) {
			c.catchUp(s, l)
		}
	}
}

// catchUp applies every committed entry s lacks; from's snapshot first
// when from (the leader) has one past s's index, as Raft's InstallSnapshot.
func (c *Cluster) catchUp(s, from *Server) {
	if from != nil && from.snap != nil && from.snap.index > s.applied {
		if err := s.FSM.Restore(io.NopCloser(bytes.NewReader(from.snap.data))); err != nil {
			s.stop(fmt.Errorf("install snapshot from %s: %w", from.Name, err))
			return
		}
		c.sim.E.trace.Addf("raft", "%s installed the snapshot of %s at %d", s.Name, from.Name, from.snap.index)
		s.applied = from.snap.index
		s.snap = &snapshot{index: from.snap.index, data: from.snap.data}
	}
	for s.up && s.applied < c.CommitIndex() {
		s.applyNext()
	}
}

// applyNext applies the entry after s.applied to s's FSM. It returns nil
// when the FSM halted (the server is then stopped).
func (s *Server) applyNext() *fsm.Result {
	c := s.c
	i := s.applied + 1
	e := c.log[i-1]
	res, _ := s.FSM.Apply(&raft.Log{Index: i, Term: e.term, Type: raft.LogCommand, Data: e.data}).(*fsm.Result)
	select {
	case <-s.FSM.Halted():
		s.stop(s.FSM.Err())
		return nil
	default:
	}
	s.applied = i
	if s == c.leader && i%snapshotEvery == 0 {
		s.Snapshot()
	}
	return res
}

// stop takes a server whose FSM halted out of the cluster, as production
// stops the process.
func (s *Server) stop(err error) {
	s.halted = err
	s.c.sim.E.trace.Addf("server", "%s stopped: %v", s.Name, err)
	s.c.sim.violation(InvFSMHalted, "server %s: %v", s.Name, err)
	s.down()
}

func (s *Server) down() {
	if s.c.leader == s {
		s.c.stepDown("went down")
	}
	s.up = false
}

// Snapshot takes a snapshot of the server's FSM (raft's periodic
// snapshot); a restart restores from it.
func (s *Server) Snapshot() {
	if !s.up {
		return
	}
	snap, err := s.FSM.Snapshot()
	if err != nil {
		s.c.sim.E.trace.Addf("server", "%s snapshot failed: %v", s.Name, err)
		return
	}
	sink := &memSink{}
	err = snap.Persist(sink)
	snap.Release()
	if err != nil {
		s.c.sim.E.trace.Addf("server", "%s snapshot failed: %v", s.Name, err)
		return
	}
	s.snap = &snapshot{index: s.applied, data: sink.Bytes()}
	s.c.sim.E.trace.Addf("server", "%s snapshot at %d", s.Name, s.applied)
}

// Crash stops the server's process: its duties stop if it leads, its
// FSM's file is closed.
func (s *Server) Crash() {
	if !s.up {
		return
	}
	s.c.sim.E.trace.Addf("server", "%s crashes", s.Name)
	s.c.sim.resetCoroutines(s.FSM)
	s.down()
	if err := s.FSM.Close(); err != nil {
		s.c.sim.E.trace.Addf("server", "%s close fsm: %v", s.Name, err)
	}
}

// Restart starts a crashed server: the FSM is reopened empty and rebuilt
// from the latest snapshot and the log the server had, as production does
// on every start. It then follows the leader again.
func (s *Server) Restart() error {
	if s.up {
		return nil
	}
	if s.halted != nil {
		return fmt.Errorf("server %s halted: %w", s.Name, s.halted)
	}
	f, err := fsm.Open(s.path, s.log.Named("fsm"))
	if err != nil {
		return fmt.Errorf("server %s: reopen fsm: %w", s.Name, err)
	}
	s.FSM = f
	had := s.applied
	s.applied = 0
	if s.snap != nil {
		if err := f.Restore(io.NopCloser(bytes.NewReader(s.snap.data))); err != nil {
			return fmt.Errorf("server %s: restore snapshot: %w", s.Name, err)
		}
		s.applied = s.snap.index
	}
	s.up = true
	for s.up && s.applied < had {
		s.applyNext()
	}
	s.c.sim.E.trace.Addf("server", "%s restarted (snapshot %d, replayed to %d)", s.Name, snapIndex(s.snap), s.applied)
	s.c.replicate()
	return nil
}

func snapIndex(s *snapshot) uint64 {
	if s == nil {
		return 0
	}
	return s.index
}

// Propose applies a command through the ideal log on the leader: the
// Proposer every duty and the endpoint are given.
func (s *Server) Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.c.sim.beforePropose(s, typ) // on-propose: interleave.go
	return s.c.propose(s, reqID, typ, payload)
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
}

func (m *memSink) ID() string    { return "sim" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }
