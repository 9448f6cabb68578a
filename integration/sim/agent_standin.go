package sim

// STAND-IN, to be deleted when the steppable chime/agent lands on main: a
// minimal agent (register, heartbeat, desired-state sync, a reconcile that
// removes stale copies and starts what is placed here) so that the servers
// have something to talk to.

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

type standinAgent struct {
	h        *Host
	srv      *agentServers
	identity struct{ NodeID, Secret string }
	reg      bool
	desired  *api.DesiredState
	stops    []func()
}

func startStandin(h *Host) (*standinAgent, error) {
	a := &standinAgent{h: h, srv: newAgentServers(h)}
	path := filepath.Join(h.dir, "identity.json")
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &a.identity); err != nil {
			return nil, err
		}
	} else {
		a.identity.NodeID, a.identity.Secret = h.sim.E.ID(), h.sim.E.ID()+h.sim.E.ID()
		b, _ := json.Marshal(a.identity)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}
	w := h.sim.E
	iv := h.sim.Cluster.cfg.HeartbeatInterval
	a.stops = append(a.stops,
		w.Every(0, 2e9, h.Name+" agent.register", a.register),
		w.Every(iv, iv, h.Name+" agent.heartbeat", a.heartbeat),
		w.Every(1e9, 5e9, h.Name+" agent.sync", a.sync),
	)
	return a, nil
}

func (a *standinAgent) stop() {
	for _, s := range a.stops {
		s()
	}
}

func (a *standinAgent) thawed() {}

func (a *standinAgent) register() {
	if a.reg || a.h.frozen {
		return
	}
	ctx := context.Background()
	vc, mem, err := a.h.HV.Capacity(ctx)
	if err != nil {
		return
	}
	resp, err := a.srv.Register(ctx, api.RegisterRequest{ID: a.identity.NodeID, Name: a.h.Name, Secret: a.identity.Secret,
		APIAddr: a.h.Addr(Mgmt) + ":4660", GossipAddr: a.h.Addr(Mgmt) + ":4662", MigrationURI: "qemu+tcp://" + a.h.Addr(Mgmt) + "/system",
		MigrationAddr: a.h.Addr(Mgmt), VCPUs: vc, MemoryMiB: mem, AgentVersion: structs.Version})
	if err != nil {
		return
	}
	a.reg = true
	a.h.nodeID = resp.NodeID
	a.srv.SetCredentials(a.identity.NodeID, a.identity.Secret)
}

func (a *standinAgent) heartbeat() {
	if !a.reg || a.h.frozen {
		return
	}
	doms, err := a.h.HV.List(context.Background())
	hb := api.HeartbeatRequest{NodeID: a.identity.NodeID, VMs: []structs.VMObservation{}}
	if err != nil {
		hb.VMsUnknown = true
	}
	for _, d := range doms {
		if d.Meta != nil {
			hb.VMs = append(hb.VMs, structs.VMObservation{VMID: d.UUID, State: d.State, Reason: d.Reason, Generation: d.Meta.Generation})
		}
	}
	_, _ = a.srv.Heartbeat(context.Background(), hb)
}

func (a *standinAgent) sync() {
	if !a.reg || a.h.frozen {
		return
	}
	ds, err := a.srv.Desired(context.Background(), api.QueryOptions{})
	if err != nil {
		return
	}
	a.desired = ds
	a.reconcile()
}

func (a *standinAgent) reconcile() {
	ctx := context.Background()
	doms, err := a.h.HV.List(ctx)
	if err != nil {
		return
	}
	want := map[string]api.DesiredVM{}
	for _, vm := range a.desired.VMs {
		want[vm.ID] = vm
	}
	have := map[string]hypervisor.Domain{}
	var errs []error
	for _, d := range doms {
		if d.Meta == nil {
			continue
		}
		vm, ok := want[d.UUID]
		if !ok || d.Meta.Generation < vm.Generation {
			errs = append(errs, a.h.HV.Destroy(ctx, d.UUID), a.h.HV.Undefine(ctx, d.UUID))
			continue
		}
		have[d.UUID] = d
	}
	if errors.Join(errs...) != nil {
		return
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		vm := want[id]
		d, ok := have[id]
		run := vm.DesiredState == structs.DesiredRunning
		if !ok {
			if err := a.h.HV.Define(ctx, hypervisor.DomainSpec{VMID: vm.ID, Name: vm.Name, VCPUs: vm.Spec.VCPUs,
				MemoryMiB: vm.Spec.MemoryMiB, Disks: vm.Spec.Disks, Generation: vm.Generation}); err != nil {
				continue
			}
		}
		switch {
		case run && d.State != hypervisor.StateRunning:
			_ = a.h.HV.Start(ctx, id)
		case !run && d.State == hypervisor.StateRunning:
			_ = a.h.HV.Destroy(ctx, id)
		}
	}
}
