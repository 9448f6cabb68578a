package endpoint

import (
	"context"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// ModifyVM changes the automatic-HA settings of the VM ref names (`chime
// vm modify`): whether it is ha, and its restart priority.
func (e *Endpoints) ModifyVM(ctx context.Context, reqID, ref string, req api.ModifyVMRequest) (*structs.VM, error) {
	if req.HA == nil && req.Priority == nil {
		return nil, structs.Invalid("priority", "nothing to change: give ha or priority")
	}
	if req.Priority != nil && !structs.ValidPriority(*req.Priority) {
		return nil, structs.Invalid("priority", "must be high, medium or low, got %q", *req.Priority)
	}
	vm, err := e.state.ResolveVM(ref)
	if err != nil {
		return nil, err
	}
	if _, err := e.propose.Propose(ctx, e.requestID(reqID), fsm.CmdSetHA, fsm.SetHA{VMID: vm.ID, HA: req.HA, Priority: req.Priority}); err != nil {
		return nil, err
	}
	return e.state.VM(vm.ID)
}
