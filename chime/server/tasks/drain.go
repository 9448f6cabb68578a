package tasks

import (
	"context"
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// advanceDrain finishes a drain task once the agent acknowledged that
// every VM is stopped (or the node has no VM). A node enabled or disabled
// again, or removed, cancels it.
func (r *Runner) advanceDrain(ctx context.Context, t structs.Task) error {
	n, err := r.state.Node(t.NodeID)
	if err != nil {
		t.State, t.Error = structs.TaskCancelled, "node removed"
		return r.put(ctx, t, t.ModifyIndex)
	}
	if n.ManagementState != structs.NodeDrained {
		t.State, t.Error = structs.TaskCancelled, "node "+n.ManagementState+" again"
		return r.put(ctx, t, t.ModifyIndex)
	}
	placed, _, err := r.state.VMsOnNode(n.ID)
	if err != nil {
		return fmt.Errorf("read vms on node %s: %w", n.Name, err)
	}
	if !n.DrainAcked && !n.LocalDrained && len(placed) > 0 {
		if t.State == structs.TaskPending {
			t.State = structs.TaskRunning
			return r.put(ctx, t, t.ModifyIndex)
		}
		return nil
	}
	t.State = structs.TaskSucceeded
	for i := range t.Steps {
		t.Steps[i].State = structs.TaskSucceeded
	}
	return r.put(ctx, t, t.ModifyIndex)
}
