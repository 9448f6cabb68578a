package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

func (s *Server) handleCreateVM(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CreateVMRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if id, aerr, seen := s.fsm.Applied(r.Header.Get(api.HeaderRequestID)); seen {
		if aerr != nil {
			return nil, aerr
		}
		w.WriteHeader(http.StatusCreated)
		return s.fsm.VM(id) // a retry of a create that went through
	}
	if _, err := s.fsm.ResolveVM(req.Name); err == nil {
		return nil, structs.Conflict("name", "a VM named %q already exists", req.Name)
	}
	desired := structs.DesiredRunning
	if req.Stopped {
		desired = structs.DesiredStopped
	}
	vm := structs.VM{ID: uuid.NewString(), Name: req.Name, DesiredState: desired, Spec: structs.VMSpec{
		VCPUs: req.VCPUs, MemoryMiB: req.Memory, Disks: req.Disks, HA: req.HA, Labels: req.Labels, AntiAffinity: req.Group}}

	// Placement and its proposal are one decision, so that two concurrent
	// creates cannot both take the last free capacity of a node.
	var res *fsm.Result
	err := s.placer.Decide(func() error {
		nodeID, err := s.placer.Place(vm, nil)
		if err != nil && !errors.Is(err, scheduler.ErrNoCapacity) {
			return err
		}
		res, err = s.propose(r.Context(), r.Header.Get(api.HeaderRequestID), fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: nodeID})
		return err
	})
	if err != nil {
		return nil, err
	}
	w.WriteHeader(http.StatusCreated)
	return s.fsm.VM(res.ObjectID)
}

func (s *Server) handleListVMs(w http.ResponseWriter, r *http.Request) (any, error) {
	idx, err := s.block(r, s.fsm.Index)
	if err != nil {
		return nil, err
	}
	setIndex(w, idx)
	vms, err := s.fsm.VMs()
	if vms == nil {
		vms = []structs.VM{}
	}
	return vms, err
}

func (s *Server) handleGetVM(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.fsm.ResolveVM(r.PathValue("id"))
}

func (s *Server) handleVMAction(w http.ResponseWriter, r *http.Request) (any, error) {
	action := r.PathValue("action")
	vm, err := s.fsm.ResolveVM(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	reqID := r.Header.Get(api.HeaderRequestID)
	switch action {
	case "start", "stop":
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
		state := structs.DesiredRunning
		if action == "stop" {
			state = structs.DesiredStopped
		}
		if _, err := s.propose(r.Context(), reqID, fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: state}); err != nil {
			return nil, err
		}
		return s.fsm.VM(vm.ID)
	case "restart":
		if err := decodeEmpty(r); err != nil {
			return nil, err
		}
		return s.restartVM(r.Context(), reqID, vm)
	case "migrate":
		if t, ok := s.retriedTask(reqID); ok {
			return t, nil
		}
		var body struct {
			To string `json:"to"`
		}
		if err := decodeOptional(r, &body); err != nil {
			return nil, err
		}
		return s.migrateVM(r.Context(), reqID, vm, body.To)
	}
	return nil, structs.NotFound("action", "unknown VM action %q (start, stop, restart, migrate)", action)
}

// restartVM stops a running VM, waits until its agent reports it stopped,
// and starts it again. A VM that is not running is simply started.
func (s *Server) restartVM(ctx context.Context, reqID string, vm *structs.VM) (*structs.VM, error) {
	if vm.State == structs.StateRunning && vm.DesiredState == structs.DesiredRunning {
		if _, err := s.propose(ctx, reqID+"-stop", fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: structs.DesiredStopped}); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		var last string
		s.fsm.WaitFor(wctx, 0, func() uint64 {
			cur, err := s.fsm.VM(vm.ID)
			if err != nil || cur.State != structs.StateRunning {
				if cur != nil {
					last = cur.State
				}
				return 1
			}
			last = cur.State
			return 0
		})
		if last == structs.StateRunning {
			// Leave it stopped-desired? No: an operator asked for a restart,
			// so make sure it comes back, and say the stop did not confirm.
			_, _ = s.propose(ctx, reqID+"-start", fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: structs.DesiredRunning})
			return nil, &api.Error{Status: http.StatusGatewayTimeout, Field: "id",
				Message: fmt.Sprintf("vm %s: the agent did not report it stopped within 2m; desired state is running again", vm.Name)}
		}
	}
	if _, err := s.propose(ctx, reqID+"-start", fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: structs.DesiredRunning}); err != nil {
		return nil, err
	}
	return s.fsm.VM(vm.ID)
}

func (s *Server) handleDeleteVM(w http.ResponseWriter, r *http.Request) (any, error) {
	vm, err := s.fsm.ResolveVM(r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if _, err := s.propose(r.Context(), r.Header.Get(api.HeaderRequestID), fsm.CmdDeleteVM, fsm.DeleteVM{VMID: vm.ID}); err != nil {
		return nil, err
	}
	return nil, nil
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
