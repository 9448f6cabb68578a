package server

import (
	"net/http"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
)

func (s *Server) handleListNodes(w http.ResponseWriter, r *http.Request) (any, error) {
	idx, err := s.block(r, s.fsm.Index)
	if err != nil {
		return nil, err
	}
	setIndex(w, idx)
	nodes, err := s.fsm.Nodes()
	if nodes == nil {
		nodes = []structs.Node{}
	}
	return nodes, err
}

func (s *Server) handleGetNode(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.fsm.ResolveNode(r.PathValue("id"))
}

func (s *Server) handleNodeAction(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.fsm.ResolveNode(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	reqID := r.Header.Get(api.HeaderRequestID)
	action := r.PathValue("action")
	if action == "drain" || action == "evacuate" || action == "rebuild" {
		if t, ok := s.retriedTask(reqID); ok {
			return t, nil
		}
	}
	switch action {
	case "drain":
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
		return s.drainNode(r.Context(), reqID, n)
	case "enable", "disable":
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
		state := map[string]string{"enable": structs.NodeEnabled, "disable": structs.NodeDisabled}[action]
		if _, err := s.propose(r.Context(), reqID, fsm.CmdSetManagement, fsm.SetManagement{NodeID: n.ID, State: state}); err != nil {
			return nil, err
		}
		if action == "enable" {
			s.kickPlacement()
		}
		return s.fsm.Node(n.ID)
	case "rebuild":
		var body struct {
			ConfirmFenced bool `json:"confirm_fenced"`
		}
		if err := decodeOptional(r, &body); err != nil {
			return nil, err
		}
		return s.rebuildNode(r.Context(), reqID, n, body.ConfirmFenced)
	case "evacuate":
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
		return s.evacuateNode(r.Context(), reqID, n)
	}
	return nil, structs.NotFound("action", "unknown node action %q (enable, disable, drain, rebuild, evacuate)", action)
}

func (s *Server) handleRemoveNode(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.fsm.ResolveNode(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if _, err := s.propose(r.Context(), r.Header.Get(api.HeaderRequestID), fsm.CmdRemoveNode, fsm.RemoveNode{NodeID: n.ID}); err != nil {
		return nil, err
	}
	s.hb.Forget(n.ID)
	return nil, nil
}
