package agent

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/agent/local"
	"github.com/chime-ha/chime/chime/structs"
)

// Status assembles the local status (`chime agent status`). It asks
// libvirt afresh and falls back to the reconciler's last listing when
// libvirt does not answer.
func (a *Agent) Status(ctx context.Context) local.Status {
	domains, lastPass, passErr := a.rec.Domains()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	fresh, listErr := a.hv.List(lctx)
	if listErr == nil {
		domains = fresh
	}
	cancel()
	a.mu.Lock()
	st := local.Status{
		NodeID: a.nodeID, Name: a.cfg.Name,
		Servers: local.ServerContact{
			Addrs:       a.servers.Addrs(),
			Reachable:   !a.lastContact.IsZero() && a.contactErr == nil,
			LastContact: a.lastContact,
		},
		Registered:    a.registered,
		Synced:        a.desired != nil,
		LastReconcile: lastPass,
		VMs:           []local.VM{},
	}
	if a.contactErr != nil {
		st.Servers.LastError = a.contactErr.Error()
	}
	vms := map[string]*local.VM{}
	if a.desired != nil {
		st.DesiredIndex = a.desired.Index
		for _, vm := range a.desired.VMs {
			vms[strings.ToLower(vm.ID)] = &local.VM{ID: vm.ID, Name: vm.Name, DesiredState: vm.DesiredState,
				State: local.StateUndefined, Generation: vm.Generation}
		}
	}
	a.mu.Unlock()
	if a.ops.Drained() {
		st.LocalDrainState = localDrainState(listErr != nil, domains)
		st.LocalDrained = st.LocalDrainState == structs.LocalDrainDone
	}
	st.LibvirtConnected = a.hv.Connected()
	if passErr != nil {
		st.ReconcileError = passErr.Error()
	}
	for _, d := range domains {
		if d.Meta == nil {
			continue
		}
		v, ok := vms[strings.ToLower(d.UUID)]
		if !ok {
			v = &local.VM{ID: d.UUID, Name: strings.TrimPrefix(d.Name, "chime-"), Generation: d.Meta.Generation}
			vms[strings.ToLower(d.UUID)] = v
		}
		v.State, v.Reason = d.State, d.Reason
	}
	for id, ref := range a.rec.StartRefusals() {
		if v, ok := vms[strings.ToLower(id)]; ok {
			v.StartRefused = &local.StartRefusal{Error: ref.Error, Since: ref.Since, Attempts: ref.Attempts, NextTry: ref.NextTry}
		}
	}
	for _, v := range vms {
		st.VMs = append(st.VMs, *v)
	}
	slices.SortFunc(st.VMs, func(x, y local.VM) int {
		return cmp.Or(strings.Compare(x.Name, y.Name), strings.Compare(x.ID, y.ID))
	})
	return st
}

// localBackend serves the local socket: the status from the agent, drain
// and migrate from the HA operations.
type localBackend struct{ a *Agent }

func (b localBackend) Status(ctx context.Context) local.Status { return b.a.Status(ctx) }

func (b localBackend) Drain(ctx context.Context) (local.DrainResult, error) { return b.a.Drain(ctx) }

func (b localBackend) Migrate(ctx context.Context, req local.MigrateRequest) ([]local.MigrateResult, error) {
	return b.a.Migrate(ctx, req)
}
