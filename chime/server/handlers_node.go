package server

import (
	"net/http"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
)

func (s *Server) handleListNodes(w http.ResponseWriter, r *http.Request) (any, error) {
	idx, err := s.block(r, s.fsm.Index)
	if err != nil {
		return nil, err
	}
	setIndex(w, idx)
	nodes, err := s.fsm.Nodes()
	if err != nil {
		return nil, err
	}
	if nodes == nil {
		nodes = []structs.Node{}
	}
	return jsonList[structs.Node](nodes), nil
}

func (s *Server) handleGetNode(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.fsm.ResolveNode(r.PathValue("id"))
}

// handleNodeAction enables, disables, drains, evacuates or rebuilds a
// node, or resets its secret. The node is resolved before the body is read, so that an unknown
// node answers 404 whatever the body says; an unknown action is the
// endpoint's 404.
func (s *Server) handleNodeAction(w http.ResponseWriter, r *http.Request) (any, error) {
	ref, op := r.PathValue("id"), endpoint.NodeOp(r.PathValue("action"))
	if _, err := s.fsm.ResolveNode(ref); err != nil {
		return nil, err
	}
	var body struct {
		ConfirmFenced bool `json:"confirm_fenced"`
	}
	switch op {
	case endpoint.NodeRebuild:
		if err := decodeOptional(r, &body); err != nil {
			return nil, err
		}
	case endpoint.NodeEnable, endpoint.NodeDisable, endpoint.NodeDrain, endpoint.NodeEvacuate, endpoint.NodeResetSecret:
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
	}
	res, err := s.ep.NodeAction(r.Context(), r.Header.Get(api.HeaderRequestID), ref, op, body.ConfirmFenced)
	switch {
	case err != nil:
		return nil, err
	case res.Task != nil:
		return res.Task, nil
	}
	return res.Node, nil
}

func (s *Server) handleRemoveNode(w http.ResponseWriter, r *http.Request) (any, error) {
	return nil, s.ep.RemoveNode(r.Context(), r.Header.Get(api.HeaderRequestID), r.PathValue("id"))
}

// handleFenceNode runs the fence command for a node now (`chime node
// fence`): on success the node is recorded fenced and unreachable, and
// automatic HA may restart its ha VMs elsewhere.
func (s *Server) handleFenceNode(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.fsm.ResolveNode(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if err := decodeEmpty(r); err != nil {
		return nil, err
	}
	out, err := s.recovery.FenceNow(r.Context(), *n)
	if err != nil {
		return nil, err
	}
	cur, err := s.fsm.Node(n.ID)
	if err != nil {
		return nil, err
	}
	return api.FenceResponse{Node: cur, Output: out}, nil
}
