package server

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// incidentPruneEvery is how often the leader checks the resolved
// incidents against --incident-retention.
const incidentPruneEvery = 30 * time.Second

// incidentPruner is the leader's duty that keeps at most
// --incident-retention resolved incidents: the FSM opens and resolves
// them itself (fsm/incidents.go); dropping the oldest is a command, so
// every server drops the same ones.
func (s *Server) incidentPruner(ctx context.Context) {
	keep := uint64(s.cfg.IncidentRetention)
	every := incidentPruneEvery
	if s.cfg.incidentPruneEvery > 0 {
		every = s.cfg.incidentPruneEvery
	}
	for {
		if n := s.fsm.ResolvedIncidents(); n > keep {
			if _, err := s.propose(ctx, "", fsm.CmdPruneIncidents, fsm.PruneIncidents{Keep: keep}); err != nil && ctx.Err() == nil {
				s.log.Warn("incident prune failed", "resolved", n, "keep", keep, "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(every):
		}
	}
}

// handleIncidents lists incidents, newest first: ?state=open|resolved,
// ?node=<id, name or prefix>; a blocking query on the incidents' index.
func (s *Server) handleIncidents(w http.ResponseWriter, r *http.Request) (any, error) {
	q := r.URL.Query()
	st := q.Get("state")
	if !structs.ValidIncidentState(st) {
		return nil, structs.Invalid("state", "%q is not an incident state: open or resolved", st)
	}
	// A node that is gone (removed) is matched by the id or name its
	// incidents recorded.
	ref := q.Get("node")
	nodeID := ref
	if ref != "" {
		n, err := s.fsm.ResolveNode(ref)
		switch {
		case err == nil && n != nil:
			nodeID = n.ID
		case err != nil && !structs.IsNotFound(err):
			return nil, err
		}
	}
	idx, err := s.block(r, s.fsm.IncidentIndex)
	if err != nil {
		return nil, err
	}
	out, err := s.fsm.Incidents(st, "")
	if nodeID != "" {
		out = slices.DeleteFunc(out, func(i structs.Incident) bool { return i.NodeID != nodeID && i.NodeName != ref })
	}
	if out == nil {
		out = []structs.Incident{}
	}
	setIndex(w, idx)
	return out, err
}

// handleGetIncident returns one incident by its number.
func (s *Server) handleGetIncident(w http.ResponseWriter, r *http.Request) (any, error) {
	raw := r.PathValue("id")
	id, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || id == 0 {
		return nil, structs.Invalid("id", "%q is not an incident id (a positive integer)", raw)
	}
	idx, err := s.block(r, s.fsm.IncidentIndex)
	if err != nil {
		return nil, err
	}
	inc, err := s.fsm.Incident(id)
	if err != nil {
		return nil, err
	}
	if inc == nil {
		return nil, structs.NotFound("id", "no incident %d (never opened, or pruned)", id)
	}
	setIndex(w, idx)
	return inc, nil
}
