package server

import (
	"errors"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
)

// agentConfig is what the endpoints put in every register and heartbeat
// answer: the timing from this server's configuration and the servers'
// gossip addresses.
type agentConfig struct{ s *Server }

func (a agentConfig) Timing() api.Timing {
	return api.Timing{HeartbeatInterval: a.s.cfg.HeartbeatInterval, MissedHeartbeats: a.s.cfg.MissedHeartbeats,
		LeaseMargin: a.s.cfg.IsolationLeaseMargin}
}

func (a agentConfig) GossipAddrs() []string { return a.s.gossipAddrs() }

// gossipCacheFor is how long the list of gossip addresses is reused.
const gossipCacheFor = 5 * time.Second

// gossipAddrs lists the servers' memberlist addresses for agents; it is
// cached for a few seconds because every heartbeat answer carries it.
func (s *Server) gossipAddrs() []string {
	s.gossipMu.Lock()
	defer s.gossipMu.Unlock()
	now := s.clock.Now()
	if now.Sub(s.gossipAt) < gossipCacheFor && s.gossipCache != nil {
		return s.gossipCache
	}
	var out []string
	for _, m := range s.pool.Servers() {
		out = append(out, m.Addr+":"+strconv.Itoa(m.Port))
	}
	sort.Strings(out)
	s.gossipCache, s.gossipAt = out, now
	return out
}

// authenticate checks an agent's node id and secret headers. Missing
// credentials and an unknown node are 401 (the agent must register); a
// wrong secret is 403.
func (s *Server) authenticate(r *http.Request) (*structs.Node, error) {
	id, secret := r.Header.Get(api.HeaderNode), r.Header.Get(api.HeaderSecret)
	if id == "" || secret == "" {
		return nil, &api.Error{Status: http.StatusUnauthorized, Message: "agent credentials missing (" + api.HeaderNode + ", " + api.HeaderSecret + ")"}
	}
	n, err := s.ep.Authenticate(id, secret)
	if errors.Is(err, structs.ErrNotFound) {
		e := structs.AsError(err)
		return nil, api.Unauthorized(e.Field, e.Message)
	}
	return n, err
}

// handleRegister creates a node or re-registers an existing one
// (endpoint.Register).
func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.RegisterRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	out, err := s.ep.RegisterWith(r.Context(), r.Header.Get(api.HeaderRequestID), req, callerFrom(r.Context()))
	if err != nil {
		return nil, err
	}
	return out, nil
}

// handleHeartbeat is where a heartbeat arrives over HTTP: authenticated
// and decoded here, then handed to endpoint.Heartbeat, which validates it
// and gives it to the heartbeat monitor.
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	var hb api.HeartbeatRequest
	if err := decode(r, &hb); err != nil {
		return nil, err
	}
	out, err := s.ep.Heartbeat(r.Context(), n, hb)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// handleDesired answers an agent's blocking query for what it must run:
// it waits on the node's own index (one write wakes one agent), then reads
// the answer (endpoint.Desired). Only a leader that passed its barrier in
// this term answers (uniqueness rule 11): a new leader's state may lack a
// placement its predecessor committed, and an agent told to run a VM that
// already moved would start a second copy. Before that it answers 503 and
// the agent retries.
func (s *Server) handleDesired(w http.ResponseWriter, r *http.Request) (any, error) {
	if !s.leaderReady() {
		return nil, errBarrierPending
	}
	n, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	if _, err := s.block(r, func() uint64 { return s.fsm.NodeIndex(n.ID) }); err != nil {
		return nil, err
	}
	if !s.leaderReady() { // leadership changed during the wait
		return nil, errBarrierPending
	}
	out, err := s.ep.Desired(n)
	if err != nil {
		return nil, err
	}
	setIndex(w, out.Index)
	return out, nil
}

// handleMigrated takes a source agent's migration result
// (endpoint.Migrated).
func (s *Server) handleMigrated(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	var rep api.MigrationReport
	if err := decode(r, &rep); err != nil {
		return nil, err
	}
	if err := s.ep.Migrated(r.Context(), r.Header.Get(api.HeaderRequestID), n, rep); err != nil {
		return nil, err
	}
	return map[string]bool{"recorded": true}, nil
}
