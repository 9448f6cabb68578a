package sim

// STAND-IN, to be deleted when chime/server/endpoint lands on main: the
// subset of the server's request logic the simulator calls, with the same
// signatures as endpoint.Endpoints, copied from chime/server's handlers.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

type endpoint struct {
	s *Server
	d *leaderDuties
}

func newEndpoint(s *Server, d *leaderDuties) *endpoint { return &endpoint{s: s, d: d} }

func standinHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func (e *endpoint) timing() api.Timing {
	return api.Timing{HeartbeatInterval: e.s.c.cfg.HeartbeatInterval, MissedHeartbeats: e.s.c.cfg.MissedHeartbeats}
}

func (e *endpoint) requestID(reqID string) string {
	if reqID == "" {
		return e.s.c.sim.E.ID()
	}
	return reqID
}

func (e *endpoint) Authenticate(nodeID, secret string) (*structs.Node, error) {
	if nodeID == "" || secret == "" {
		return nil, structs.Forbidden("agent credentials missing (node id and secret)")
	}
	n, err := e.s.FSM.Node(nodeID)
	if err != nil {
		return nil, structs.NotFound("node_id", "unknown node %s: register first", nodeID)
	}
	if subtle.ConstantTimeCompare([]byte(standinHash(secret)), []byte(e.s.FSM.NodeSecretHash(n.ID))) != 1 {
		return nil, structs.Forbidden("node %s: wrong secret", nodeID)
	}
	return n, nil
}

func (e *endpoint) Register(ctx context.Context, reqID string, req api.RegisterRequest) (api.RegisterResponse, error) {
	if err := req.Validate(); err != nil {
		return api.RegisterResponse{}, err
	}
	reqID = e.requestID(reqID)
	secret := req.Secret
	if secret == "" {
		secret = e.s.c.sim.E.ID() + e.s.c.sim.E.ID()
	}
	if existing, err := e.s.FSM.Node(req.ID); err == nil {
		if req.Secret == "" || subtle.ConstantTimeCompare([]byte(standinHash(req.Secret)), []byte(e.s.FSM.NodeSecretHash(existing.ID))) != 1 {
			return api.RegisterResponse{}, structs.Forbidden("node %s is registered already: its agent must present its secret", req.ID)
		}
	} else if !structs.IsNotFound(err) {
		return api.RegisterResponse{}, err
	}
	node := structs.Node{ID: req.ID, Name: req.Name, APIAddr: req.APIAddr, GossipAddr: req.GossipAddr,
		MigrationURI: req.MigrationURI, MigrationAddr: req.MigrationAddr, BusinessInterface: req.BusinessInterface,
		VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Labels: req.Labels, AgentVersion: req.AgentVersion}
	if _, err := e.s.Propose(ctx, reqID, fsm.CmdRegisterNode, fsm.RegisterNode{Node: node, SecretHash: standinHash(secret)}); err != nil {
		return api.RegisterResponse{}, err
	}
	e.d.monitor.Registered(req.ID)
	return api.RegisterResponse{NodeID: req.ID, Secret: secret, Timing: e.timing()}, nil
}

func (e *endpoint) Heartbeat(ctx context.Context, n *structs.Node, hb api.HeartbeatRequest) (api.HeartbeatResponse, error) {
	if err := hb.Validate(); err != nil {
		return api.HeartbeatResponse{}, err
	}
	if hb.NodeID != n.ID {
		return api.HeartbeatResponse{}, structs.Forbidden("heartbeat for node %s sent with the credentials of node %s", hb.NodeID, n.ID)
	}
	out, err := e.d.monitor.Heartbeat(ctx, n, heartbeat.Report{Faults: hb.Faults, VMs: hb.VMs, VMsUnknown: hb.VMsUnknown,
		LocalDrained: hb.LocalDrained, LocalDrainID: hb.LocalDrainID, Adopted: hb.Adopted, Migrations: hb.Migrations})
	if err != nil {
		return api.HeartbeatResponse{}, err
	}
	return api.HeartbeatResponse{Timing: e.timing(), RejectedAdoptions: out.Rejected}, nil
}

func (e *endpoint) Desired(n *structs.Node) (api.DesiredState, error) {
	st := e.s.FSM
	vms, idx, err := st.VMsOnNode(n.ID)
	if err != nil {
		return api.DesiredState{}, err
	}
	if cur, err := st.Node(n.ID); err == nil {
		n = cur
	}
	out := api.DesiredState{NodeID: n.ID, ManagementState: n.ManagementState, Index: idx, VMs: []api.DesiredVM{},
		ReleasedDrainID: n.ReleasedDrainID}
	for _, vm := range vms {
		d := api.DesiredVM{ID: vm.ID, Name: vm.Name, Spec: vm.Spec, DesiredState: vm.DesiredState, Generation: vm.Generation,
			AdoptGeneration: vm.AdoptGeneration}
		if n.ManagementState == structs.NodeDrained {
			d.DesiredState = structs.DesiredStopped
		}
		if m := vm.Migration; m != nil && m.From == n.ID {
			if dest, err := st.Node(m.To); err == nil {
				addr := dest.MigrationAddr
				if addr == "" {
					addr = hostOfAddr(dest.APIAddr)
				}
				d.Migrate = &api.MigrationOrder{TaskID: m.TaskID, ToNodeID: dest.ID, DestURI: dest.MigrationURI, MigrateURI: "tcp://" + addr}
			}
		}
		out.VMs = append(out.VMs, d)
	}
	if all, err := st.VMs(); err == nil {
		for _, vm := range all {
			if m := vm.Migration; m != nil && m.To == n.ID {
				out.Incoming = append(out.Incoming, api.IncomingVM{ID: vm.ID, Name: vm.Name, Generation: vm.Generation})
			}
		}
	}
	return out, nil
}

func (e *endpoint) Migrated(ctx context.Context, reqID string, n *structs.Node, rep api.MigrationReport) error {
	vm, err := e.s.FSM.VM(rep.VMID)
	if err != nil {
		return err
	}
	from := vm.NodeID
	if vm.Migration != nil {
		from = vm.Migration.From
	}
	if from != n.ID {
		return structs.Forbidden("node %s reports a migration of vm %s, which is placed on %s", n.ID, vm.ID, from)
	}
	_, err = e.s.Propose(ctx, e.requestID(reqID), fsm.CmdMigrationEnd, fsm.MigrationEnd{
		VMID: vm.ID, TaskID: rep.TaskID, FromNode: n.ID, Generation: rep.Generation, OK: rep.OK, Error: rep.Error})
	return err
}

func (e *endpoint) CreateVM(ctx context.Context, reqID string, req api.CreateVMRequest) (*structs.VM, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	reqID = e.requestID(reqID)
	st := e.s.FSM
	if id, aerr, seen := st.Applied(reqID); seen {
		if aerr != nil {
			return nil, aerr
		}
		return st.VM(id)
	}
	if _, err := st.ResolveVM(req.Name); err == nil {
		return nil, structs.Conflict("name", "a VM named %q already exists", req.Name)
	}
	desired := structs.DesiredRunning
	if req.Stopped {
		desired = structs.DesiredStopped
	}
	vm := structs.VM{ID: e.s.c.sim.E.ID(), Name: req.Name, DesiredState: desired, Spec: structs.VMSpec{
		VCPUs: req.VCPUs, MemoryMiB: req.Memory, Disks: req.Disks, HA: req.HA, Labels: req.Labels, AntiAffinity: req.Group}}
	var res *fsm.Result
	err := e.d.placer.Decide(func() error {
		nodeID, err := e.d.placer.Place(vm, nil)
		if err != nil && !errors.Is(err, scheduler.ErrNoCapacity) {
			return err
		}
		res, err = e.s.Propose(ctx, reqID, fsm.CmdCreateVM, fsm.CreateVM{VM: vm, NodeID: nodeID})
		return err
	})
	if err != nil {
		return nil, err
	}
	return st.VM(res.ObjectID)
}

// VMOp is an operator's action on a VM's desired state.
type VMOp string

// The VM actions the stand-in knows.
const (
	VMStart VMOp = "start"
	VMStop  VMOp = "stop"
)

func (e *endpoint) VMAction(ctx context.Context, reqID, ref string, op VMOp) (*structs.VM, error) {
	vm, err := e.s.FSM.ResolveVM(ref)
	if err != nil {
		return nil, err
	}
	state := structs.DesiredRunning
	if op == VMStop {
		state = structs.DesiredStopped
	}
	if _, err := e.s.Propose(ctx, e.requestID(reqID), fsm.CmdSetDesired, fsm.SetDesired{VMID: vm.ID, State: state}); err != nil {
		return nil, err
	}
	return e.s.FSM.VM(vm.ID)
}

func (e *endpoint) DeleteVM(ctx context.Context, reqID, ref string) error {
	vm, err := e.s.FSM.ResolveVM(ref)
	if err != nil {
		return err
	}
	_, err = e.s.Propose(ctx, e.requestID(reqID), fsm.CmdDeleteVM, fsm.DeleteVM{VMID: vm.ID})
	return err
}
