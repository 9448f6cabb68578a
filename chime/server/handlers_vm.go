package server

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
)

// handleCreateVM creates a VM (endpoint.CreateVM); a retry of a create
// that went through answers 201 with the VM it created.
func (s *Server) handleCreateVM(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateVMRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	vm, err := s.ep.CreateVM(r.Context(), r.Header.Get(api.HeaderRequestID), req)
	if err != nil {
		return nil, err
	}
	w.WriteHeader(http.StatusCreated)
	return vm, nil
}

func (s *Server) handleListVMs(w http.ResponseWriter, r *http.Request) (any, error) {
	idx, err := s.block(r, s.fsm.Index)
	if err != nil {
		return nil, err
	}
	setIndex(w, idx)
	keep, err := s.vmFilter(r)
	if err != nil {
		return nil, err
	}
	vms, err := s.fsm.VMs()
	if err != nil {
		return nil, err
	}
	// Filtered in place: the list is this request's own decode, and a
	// second one of 100,000 VMs would double what the answer holds.
	out := vms[:0:len(vms)]
	for i := range vms {
		if keep(&vms[i]) {
			out = append(out, vms[i])
		}
	}
	if out == nil {
		out = []structs.VM{} // no VM at all: [] as before, not null
	}
	return jsonList[structs.VM](out), nil
}

// vmFilter is the VM list's filter from the query: node (uuid, unique
// prefix or name: it must exist), state (the shown state), desired and
// ha. Every value is checked; an unknown one is a 400 naming the field.
func (s *Server) vmFilter(r *http.Request) (func(*structs.VM) bool, error) {
	q := r.URL.Query()
	var nodeID, state, desired string
	var ha *bool
	if ref := q.Get("node"); ref != "" {
		n, err := s.fsm.ResolveNode(ref)
		if structs.IsNotFound(err) {
			return nil, structs.Invalid("node", "no node %q (a uuid, unique uuid prefix or name)", ref)
		}
		if err != nil {
			return nil, err
		}
		nodeID = n.ID
	}
	if state = q.Get("state"); state != "" && !slices.Contains(structs.VMStates, state) {
		return nil, structs.Invalid("state", "%q is not a VM state (%s)", state, strings.Join(structs.VMStates, ", "))
	}
	if desired = q.Get("desired"); desired != "" && desired != structs.StateRunning && desired != structs.StateStopped {
		return nil, structs.Invalid("desired", "%q is not a desired state (running or stopped)", desired)
	}
	if v := q.Get("ha"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, structs.Invalid("ha", "%q is not true or false", v)
		}
		ha = &b
	}
	return func(v *structs.VM) bool {
		return (nodeID == "" || v.NodeID == nodeID) && (state == "" || v.State == state) &&
			(desired == "" || v.DesiredState == desired) && (ha == nil || v.Spec.HA == *ha)
	}, nil
}

func (s *Server) handleGetVM(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.fsm.ResolveVM(r.PathValue("id"))
}

// handleVMAction starts, stops, restarts or migrates a VM. The VM is
// resolved before the body is read, so that an unknown VM answers 404
// whatever the body says; an unknown action is the endpoint's 404.
func (s *Server) handleVMAction(w http.ResponseWriter, r *http.Request) (any, error) {
	ref, action := r.PathValue("id"), r.PathValue("action")
	if _, err := s.fsm.ResolveVM(ref); err != nil {
		return nil, err
	}
	reqID := r.Header.Get(api.HeaderRequestID)
	switch op := endpoint.VMOp(action); op {
	case endpoint.VMStart, endpoint.VMStop, endpoint.VMRestart:
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
		vm, err := s.ep.VMAction(r.Context(), reqID, ref, op)
		if errors.Is(err, endpoint.ErrTimeout) {
			e := structs.AsError(err)
			return nil, &api.Error{Status: http.StatusGatewayTimeout, Field: e.Field, Message: e.Message}
		}
		if err != nil {
			return nil, err
		}
		return vm, nil
	}
	if action == "migrate" {
		var body struct {
			To string `json:"to"`
		}
		if err := decodeOptional(r, &body); err != nil {
			return nil, err
		}
		t, err := s.ep.MigrateVM(r.Context(), reqID, ref, body.To)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
	_, err := s.ep.VMAction(r.Context(), reqID, ref, endpoint.VMOp(action))
	return nil, err
}

func (s *Server) handleDeleteVM(w http.ResponseWriter, r *http.Request) (any, error) {
	return nil, s.ep.DeleteVM(r.Context(), r.Header.Get(api.HeaderRequestID), r.PathValue("id"))
}

// decodeEmpty accepts no body, or an empty JSON object.
func decodeEmpty(r *http.Request) error {
	var v struct{}
	return decodeOptional(r, &v)
}

// decodeOptional decodes a body when there is one.
func decodeOptional(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return decode(r, v)
}

// handleModifyVM changes a VM's automatic-HA settings (`chime vm modify`).
func (s *Server) handleModifyVM(w http.ResponseWriter, r *http.Request) (any, error) {
	var body api.ModifyVMRequest
	if err := decode(r, &body); err != nil {
		return nil, err
	}
	return s.ep.ModifyVM(r.Context(), r.Header.Get(api.HeaderRequestID), r.PathValue("id"), body)
}
