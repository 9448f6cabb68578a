package fsm

import (
	"fmt"
	"strings"
)

// SetHA changes a VM's automatic-HA settings (`chime vm modify`): nil
// fields are left as they are. The endpoint validates the priority.
type SetHA struct {
	VMID     string  `json:"vm_id"`
	HA       *bool   `json:"ha,omitempty"`
	Priority *string `json:"priority,omitempty"`
}

func (a *applier) setHA(p SetHA) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	var changes []string
	if p.HA != nil && v.Spec.HA != *p.HA {
		v.Spec.HA = *p.HA
		changes = append(changes, fmt.Sprintf("ha=%v", v.Spec.HA))
	}
	if p.Priority != nil && v.Spec.Priority != *p.Priority {
		v.Spec.Priority = *p.Priority
		changes = append(changes, "priority="+v.Spec.Priority)
	}
	if len(changes) == 0 {
		return v.ID, nil
	}
	if err := a.tx.PutVM(v); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.modified", v.NodeID, v.ID, "vm %s: %s", v.Name, strings.Join(changes, ", "))
}
