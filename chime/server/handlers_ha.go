package server

import (
	"net/http"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// handleHAStatus answers `chime operator ha status`: the arm switch, the
// brake and the HA reservation, as the leader judges them.
func (s *Server) handleHAStatus(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.guard.Status()
}

// handleHAAction arms or disarms automatic HA cluster-wide.
func (s *Server) handleHAAction(w http.ResponseWriter, r *http.Request) (any, error) {
	action := r.PathValue("action")
	if action != "arm" && action != "disarm" {
		return nil, structs.NotFound("action", "unknown HA action %q (arm, disarm)", action)
	}
	var body api.HAArmRequest
	if err := decodeOptional(r, &body); err != nil {
		return nil, err
	}
	if err := body.Validate(); err != nil {
		return nil, err
	}
	return s.guard.SetArmed(r.Context(), r.Header.Get(api.HeaderRequestID), action == "arm", body.Reason)
}

// handleFailover answers the whole failover plan, computed now on the
// leader from its state with the real scheduler.
func (s *Server) handleFailover(w http.ResponseWriter, r *http.Request) (any, error) {
	entries, res, err := s.placer.FailoverPlan()
	if err != nil {
		return nil, err
	}
	return &api.FailoverPlan{Entries: nonNil(entries), Reservation: res}, nil
}

// handleVMFailover answers the failover plan of one VM: one entry for a
// protected VM, none for any other.
func (s *Server) handleVMFailover(w http.ResponseWriter, r *http.Request) (any, error) {
	vm, err := s.fsm.ResolveVM(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return s.failoverOf(func(e structs.FailoverEntry) bool { return e.VMID == vm.ID })
}

// handleNodeFailover answers where the protected VMs of one node would be
// restarted if it failed now.
func (s *Server) handleNodeFailover(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.fsm.ResolveNode(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return s.failoverOf(func(e structs.FailoverEntry) bool { return e.NodeID == n.ID })
}

func (s *Server) failoverOf(keep func(structs.FailoverEntry) bool) (*api.FailoverPlan, error) {
	entries, res, err := s.placer.FailoverPlan()
	if err != nil {
		return nil, err
	}
	var out []structs.FailoverEntry
	for _, e := range entries {
		if keep(e) {
			out = append(out, e)
		}
	}
	return &api.FailoverPlan{Entries: nonNil(out), Reservation: res}, nil
}

func nonNil(e []structs.FailoverEntry) []structs.FailoverEntry {
	if e == nil {
		return []structs.FailoverEntry{}
	}
	return e
}
