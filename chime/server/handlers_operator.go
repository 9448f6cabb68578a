package server

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/gossip"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
)

func (s *Server) handlePeers(w http.ResponseWriter, r *http.Request) (any, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	_, leaderID := s.raft.LeaderWithID()
	out := []api.Peer{}
	for _, sv := range f.Configuration().Servers {
		out = append(out, api.Peer{ID: string(sv.ID), Address: string(sv.Address),
			Leader: sv.ID == leaderID, Voter: sv.Suffrage == raft.Voter})
	}
	return out, nil
}

func (s *Server) handleRemovePeer(w http.ResponseWriter, r *http.Request) (any, error) {
	id := r.PathValue("id")
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	found := false
	for _, sv := range f.Configuration().Servers {
		if string(sv.ID) == id || string(sv.Address) == id {
			id, found = string(sv.ID), true
		}
	}
	if !found {
		return nil, structs.NotFound("id", "no raft peer with id or address %q", id)
	}
	if id == s.cfg.Name {
		return nil, structs.Invalid("id", "refusing to remove the leader itself (%s): stop it and remove it from another server", id)
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return nil, fmt.Errorf("remove peer %s: %w", id, err)
	}
	return nil, nil
}

func (s *Server) handleMembers(w http.ResponseWriter, r *http.Request) (any, error) {
	out := []api.Member{}
	for _, m := range s.pool.Members() {
		out = append(out, api.Member{Name: m.Name, Addr: m.Addr + ":" + strconv.Itoa(m.Port), State: m.State, Meta: m.Meta})
	}
	return out, nil
}

// handleSnapshotSave streams a consistent copy of the replicated state.
func (s *Server) handleSnapshotSave(w http.ResponseWriter, r *http.Request) (any, error) {
	snap, err := s.fsm.Snapshot()
	if err != nil {
		return nil, err
	}
	defer snap.Release()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(s.fsm.Index(), 10))
	sink := &httpSink{w: w}
	if err := snap.Persist(sink); err != nil {
		s.log.Error("snapshot save failed", "error", err)
	}
	return nil, errWritten
}

// handleSnapshotRestore replaces the cluster's state with a saved snapshot,
// through Raft so that every server installs it. The body is streamed to
// a temporary file in the data dir (never held in memory), bounded by
// --snapshot-max-bytes, and validated (fsm/state.ValidateFile) before
// Raft sees it: a bad snapshot is a 400 naming the problem and the state
// is unchanged.
func (s *Server) handleSnapshotRestore(w http.ResponseWriter, r *http.Request) (any, error) {
	path, size, err := s.receiveSnapshot(w, r)
	if path != "" {
		defer os.Remove(path)
	}
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size}
	if err := s.raft.Restore(meta, f, 0); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	s.log.Info("snapshot restored", "bytes", size)
	return map[string]any{"restored_bytes": size, "index": s.fsm.Index()}, nil
}

func (s *Server) status() api.Status {
	addr, id := s.raft.LeaderWithID()
	st := api.Status{Name: s.cfg.Name, Leader: string(addr), IsLeader: s.IsLeader(),
		State: s.raft.State().String(), Index: s.fsm.Index()}
	if string(id) != "" {
		st.LeaderAPI, _ = s.leaderAPI()
	}
	st.Healthy = addr != "" && s.fsm.Err() == nil
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.status(), nil
}

func (s *Server) handleLeader(w http.ResponseWriter, r *http.Request) (any, error) {
	st := s.status()
	if st.Leader == "" {
		return nil, fmt.Errorf("%w: no leader elected", structs.ErrNoLeader)
	}
	return map[string]string{"leader": st.Leader, "leader_api": st.LeaderAPI}, nil
}

// handleHealth answers 200 when this server knows a leader and its state
// machine applies the log, 503 otherwise.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := s.fsm.Err(); err != nil {
		return nil, &api.Error{Status: http.StatusServiceUnavailable, Message: fmt.Sprintf("server %s: %v", s.cfg.Name, err)}
	}
	st := s.status()
	if !st.Healthy {
		return nil, fmt.Errorf("%w: server %s sees no leader", structs.ErrNoLeader, s.cfg.Name)
	}
	return st, nil
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) (any, error) {
	var after uint64
	if v := r.URL.Query().Get("after"); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			return nil, structs.Invalid("after", "%q is not a non-negative integer", v)
		}
	}
	limit := 1000
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return nil, structs.Invalid("limit", "%q must be an integer between 1 and 10000", v)
		}
		limit = n
	}
	if _, err := s.block(r, s.fsm.LastEventSeq); err != nil {
		return nil, err
	}
	// The audit log shares the event log: ?audit lists its events only,
	// the default everything else (docs/security.md#audit-log).
	_, audit := r.URL.Query()["audit"]
	ev, scanned, err := s.filteredEvents(after, limit, audit)
	if ev == nil {
		ev = []structs.Event{}
	}
	// The index is how far the scan went (the last sequence number when it
	// reached the end): a client following with index=<it> and after=<it>
	// neither misses an event nor spins on the other kind's.
	setIndex(w, scanned)
	return ev, err
}

// filteredEvents returns up to limit events after a sequence number that
// are audit events (audit) or not (!audit), and the sequence number the
// scan reached.
func (s *Server) filteredEvents(after uint64, limit int, audit bool) ([]structs.Event, uint64, error) {
	last := s.fsm.LastEventSeq()
	var out []structs.Event
	var scanned uint64 // the last sequence number seen
	for len(out) < limit {
		batch, err := s.fsm.Events(after, limit)
		if err != nil {
			return out, after, err
		}
		if len(batch) == 0 {
			return out, max(scanned, last), nil
		}
		for _, e := range batch {
			after, scanned = e.Seq, e.Seq
			if (e.Kind == structs.EventAudit) == audit {
				out = append(out, e)
				if len(out) == limit {
					break
				}
			}
		}
	}
	if after >= last {
		return out, max(after, last), nil
	}
	return out, after, nil
}

func (s *Server) handleAlarms(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.alarmer.Firing()
}

// handleTasks lists tasks, newest first. It is a blocking query on the
// index of the last task write (fsm.TaskIndex): other writes do not wake it.
func (s *Server) handleTasks(w http.ResponseWriter, r *http.Request) (any, error) {
	idx, err := s.block(r, s.fsm.TaskIndex)
	if err != nil {
		return nil, err
	}
	setIndex(w, idx)
	t, err := s.fsm.Tasks()
	if t == nil {
		t = []structs.Task{}
	}
	return t, err
}

// handleGetTask returns one task by id or unique id prefix (at least 4
// characters), as a blocking query on the task index like handleTasks.
func (s *Server) handleGetTask(w http.ResponseWriter, r *http.Request) (any, error) {
	id := r.PathValue("id")
	idx, err := s.block(r, s.fsm.TaskIndex)
	if err != nil {
		return nil, err
	}
	tasks, err := s.fsm.Tasks()
	if err != nil {
		return nil, err
	}
	var match []structs.Task
	for _, t := range tasks {
		if t.ID == id {
			setIndex(w, idx)
			return t, nil
		}
		if len(id) >= 4 && len(t.ID) >= len(id) && t.ID[:len(id)] == id {
			match = append(match, t)
		}
	}
	if len(match) == 1 {
		setIndex(w, idx)
		return match[0], nil
	}
	if len(match) > 1 {
		return nil, structs.Invalid("task", "%q is ambiguous: give more characters", id)
	}
	return nil, structs.NotFound("task", "no task with id or id prefix %q", id)
}

// handleGossipKeyring lists this server's gossip keyring by fingerprint.
func (s *Server) handleGossipKeyring(w http.ResponseWriter, r *http.Request) (any, error) {
	out := api.GossipKeyring{Server: s.cfg.Name, Keys: []api.GossipKey{}, Members: s.pool.NumMembers()}
	for i, k := range s.pool.Keys() {
		out.Keys = append(out.Keys, api.GossipKey{Fingerprint: gossip.Fingerprint(k), Primary: i == 0})
	}
	return out, nil
}

// handleGossipKeyringChange installs, uses or removes a gossip key on this
// server and every alive gossip member (gossip.Pool.RotateKeyring).
func (s *Server) handleGossipKeyringChange(w http.ResponseWriter, r *http.Request) (any, error) {
	op := r.PathValue("op")
	switch op {
	case gossip.KeyInstall, gossip.KeyUse, gossip.KeyRemove:
	default:
		return nil, structs.NotFound("op", "no keyring operation %q (want install, use or remove)", op)
	}
	var req api.GossipKeyRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	key, err := gossip.ParseKey(req.Key)
	if err != nil || key == nil {
		return nil, structs.Invalid("key", "must be standard base64 of 16, 24 or 32 bytes ('chime operator gossip keygen')")
	}
	res, err := s.pool.RotateKeyring(r.Context(), op, key)
	if errors.Is(err, gossip.ErrNotEncrypted) {
		return nil, structs.Invalid("key", "this server's gossip is not encrypted (--dev or --insecure-no-gossip-key): there is no keyring to change")
	}
	if err != nil {
		return nil, structs.Invalid("key", "%v", err)
	}
	s.log.Info("gossip keyring changed", "op", op, "key", gossip.Fingerprint(key), "members", res.Members, "unreached", len(res.Errors))
	return api.GossipKeyringChange{Members: res.Members, Errors: res.Errors}, nil
}
