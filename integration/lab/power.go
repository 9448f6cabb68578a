package lab

import (
	"context"
	"fmt"
)

// PowerOff is a lab host's power loss, as a fence command causes it: every
// process in its namespace is killed (qemu, libvirtd, virtlockd, the
// agent) and both its links are cut. It is idempotent: a host already off
// is powered off again without error. `labctl power-off` is the lab's
// fence command (chime server --fence-command).
func (h *Host) PowerOff(ctx context.Context) error {
	if err := h.KillAll(ctx); err != nil {
		return fmt.Errorf("power off %s: %w", h.Name, err)
	}
	for _, n := range []string{NetMgmt, NetBiz} {
		if err := h.SetLink(ctx, n, false); err != nil {
			return fmt.Errorf("power off %s: %w", h.Name, err)
		}
	}
	return nil
}
