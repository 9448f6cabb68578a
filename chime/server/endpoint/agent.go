package endpoint

import (
	"context"
	"crypto/subtle"
	"net"
	"strings"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// minSecretLen is the shortest node secret an agent may choose (the agent
// generates 64 hex characters).
const minSecretLen = 32

// hashSecret is what the state stores of a node secret.
func hashSecret(secret string) string { return structs.HashSecret(secret) }

// secretMatches compares in constant time, so that the answer's timing
// says nothing about how much of a guessed secret was right.
func (e *Endpoints) secretMatches(nodeID, secret string) bool {
	return subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(e.state.NodeSecretHash(nodeID))) == 1
}

// Authenticate checks an agent's node id and secret and returns its node.
// An unknown node is structs.ErrNotFound (field node_id: the agent must
// register), a wrong secret structs.ErrForbidden.
func (e *Endpoints) Authenticate(nodeID, secret string) (*structs.Node, error) {
	if nodeID == "" || secret == "" {
		return nil, structs.Forbidden("agent credentials missing (node id and secret)")
	}
	n, err := e.state.Node(nodeID)
	if err != nil {
		return nil, structs.NotFound("node_id", "unknown node %s: register first", nodeID)
	}
	if !e.secretMatches(n.ID, secret) {
		return nil, structs.Forbidden("node %s: wrong secret", nodeID)
	}
	return n, nil
}

// mayReplaceSecret says whether a registration as the existing node n that
// does not present n's secret may set a new one (uniqueness rule 10: a lost
// secret is replaced only with the join credential) on an operator's word:
// `chime node reset-secret` (n.SecretReset, which the FSM checks again and
// clears when it applies the registration) and the join credential
// (joined: an agent-join token or an agent certificate, when ACLs are on;
// always true with ACLs off).
func mayReplaceSecret(n *structs.Node, joined bool) bool {
	return n.SecretReset && joined
}

// Caller is what a registration presented besides its body: whether it
// carries the join credential, and the facts of its identity that the
// request body cannot make up (its certificate).
type Caller struct {
	// Joined: an agent-join or management token, or an agent certificate
	// of the cluster (always true with ACLs off).
	Joined bool
	// JoinAccessor is the accessor id of the join token, if one was sent.
	JoinAccessor string
	// TLS: the caller presented an agent certificate of the cluster;
	// CertNames are its own names (tlsconf.CertNames).
	TLS       bool
	CertNames string
}

// binding is the host identity registration req presents as c.
func (c Caller) binding(req api.RegisterRequest) structs.NodeBinding {
	return structs.NodeBinding{HostUUID: req.HostUUID, MachineID: req.MachineID, Address: hostOf(req.APIAddr),
		TLS: c.TLS, CertNames: c.CertNames, JoinAccessor: c.JoinAccessor}
}

// Register is RegisterWith for a caller that holds the join credential
// and no certificate (ACLs off, the simulator, tests).
func (e *Endpoints) Register(ctx context.Context, reqID string, req api.RegisterRequest) (api.RegisterResponse, error) {
	return e.RegisterWith(ctx, reqID, req, Caller{Joined: true})
}

// RegisterWith creates a node or re-registers an existing one, and binds
// it to the host identity it presented (structs.NodeBinding). A new node
// needs the join credential. A known node id must present its secret; a
// new secret is let in only with the join credential, and either the
// host identity the node is bound to or an operator's reset-secret
// (mayReplaceSecret): nobody else may take over a node. The join
// credential with another host identity is a second host claiming the
// node: refused, and an identity conflict (the NodeIdentityConflict
// alarm). Other refusals are noted with the monitor, which tells a lost
// data dir from a second agent claiming the node. An agent that sends no
// secret gets a new one, which the answer carries.
func (e *Endpoints) RegisterWith(ctx context.Context, reqID string, req api.RegisterRequest, c Caller) (api.RegisterResponse, error) {
	if err := req.Validate(); err != nil {
		return api.RegisterResponse{}, err
	}
	reqID = e.requestID(reqID)
	secret := req.Secret
	if secret == "" {
		secret = e.ids.NewSecret()
	} else if len(secret) < minSecretLen {
		return api.RegisterResponse{}, structs.Invalid("secret", "must be at least %d characters (the agent generates 64 hex characters)", minSecretLen)
	}
	binding := c.binding(req)
	replace, byIdentity := false, false
	if existing, err := e.state.Node(req.ID); err == nil {
		// A binding without a host UUID (its agent could not read it)
		// binds nothing: such a node needs the operator's reset-secret.
		bound := existing.Binding != nil && existing.Binding.HostUUID != ""
		switch {
		case req.Secret != "" && e.secretMatches(existing.ID, req.Secret):
		case mayReplaceSecret(existing, c.Joined):
			replace = true
		case c.Joined && bound && len(existing.Binding.Differs(binding)) == 0:
			replace, byIdentity = true, true
		case c.Joined && bound:
			d := strings.Join(existing.Binding.Differs(binding), "; ")
			e.monitor.IdentityMismatch(ctx, existing, req.APIAddr, d)
			return api.RegisterResponse{}, structs.Forbidden("node %s (%s) is bound to another host identity (%s): a second host claims the node (a cloned host UUID or data dir?), so it gets no new secret; "+
				"if this is the node's own host and its identity changed, `chime node reset-secret %s` lets it in", existing.Name, req.ID, d, existing.Name)
		case existing.SecretReset:
			return api.RegisterResponse{}, structs.Forbidden("node %s (%s): its secret was reset, and a new one is set only by an agent that presents the join credential (an agent-join token, --join-token, or an agent TLS certificate)",
				existing.Name, req.ID)
		default:
			e.monitor.RegistrationRefused(ctx, existing, req.APIAddr)
			why := "its agent must present its secret, or the join credential from the host the node is bound to"
			if !bound {
				why = "its agent must present its secret (the node is bound to no host identity: it was last registered by an older version, or by an agent that could not read libvirt's host UUID)"
			}
			return api.RegisterResponse{}, structs.Forbidden("node %s (%s) is registered already and %s; an agent that lost its data dir is let in by `chime node reset-secret %s`",
				existing.Name, req.ID, why, existing.Name)
		}
	} else if !structs.IsNotFound(err) {
		return api.RegisterResponse{}, err
	} else if !c.Joined {
		return api.RegisterResponse{}, structs.Forbidden("registering a new node needs the join credential: an agent-join token (chime agent --join-token, CHIME_JOIN_TOKEN) or an agent TLS certificate")
	}
	node := structs.Node{ID: req.ID, Name: req.Name, APIAddr: req.APIAddr, GossipAddr: req.GossipAddr,
		MigrationURI: req.MigrationURI, MigrationAddr: req.MigrationAddr, BusinessInterface: req.BusinessInterface,
		VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Labels: req.Labels, AgentVersion: req.AgentVersion,
		IsolationResponse: req.IsolationResponse, IsolationLease: req.IsolationLease, Watchdog: req.Watchdog,
		IsolationStopBound: req.IsolationStopBound,
		Binding:            &binding}
	if _, err := e.propose.Propose(ctx, reqID, fsm.CmdRegisterNode,
		fsm.RegisterNode{Node: node, SecretHash: hashSecret(secret), ReplaceSecret: replace, ByIdentity: byIdentity}); err != nil {
		return api.RegisterResponse{}, err
	}
	e.monitor.Registered(req.ID)
	e.placer.Kick()
	return api.RegisterResponse{NodeID: req.ID, Secret: secret, Timing: e.agents.Timing(), GossipAddrs: e.agents.GossipAddrs()}, nil
}

// Heartbeat is where a heartbeat of the authenticated node n arrives: it
// is validated here, checked to be about n (its items carry no node of
// their own, and the monitor judges every one against n), and handed whole
// to the heartbeat monitor, which notes its arrival and writes what it
// changes as at most one Raft entry.
func (e *Endpoints) Heartbeat(ctx context.Context, n *structs.Node, hb api.HeartbeatRequest) (api.HeartbeatResponse, error) {
	if err := hb.Validate(); err != nil {
		return api.HeartbeatResponse{}, err
	}
	if hb.NodeID != n.ID {
		return api.HeartbeatResponse{}, structs.Forbidden("heartbeat for node %s sent with the credentials of node %s", hb.NodeID, n.ID)
	}
	// The migration log is the source's (uniqueness rule 7): every entry
	// must name the reporter as its source.
	for i, m := range hb.Migrations {
		if m.Outcome != "" && m.FromNode != n.ID {
			return api.HeartbeatResponse{}, structs.Forbidden("migrations: item %d: a node-local migration from node %s reported by node %s", i, m.FromNode, n.ID)
		}
	}
	e.counted()
	out, err := e.monitor.Heartbeat(ctx, n, heartbeat.Report{Faults: hb.Faults, VMs: hb.VMs, VMsUnknown: hb.VMsUnknown,
		LocalDrained: hb.LocalDrained, LocalDrainID: hb.LocalDrainID, LocalDrainState: hb.LocalDrainState, DesiredIndex: hb.DesiredIndex, Adopted: hb.Adopted,
		Migrations: hb.Migrations, Announced: hb.Announced, ExpiredAdoptions: hb.ExpiredAdoptions,
		StaleDestroyed: hb.StaleDestroyed})
	if err != nil {
		return api.HeartbeatResponse{}, err
	}
	if len(out.Adopted) > 0 || len(out.AppliedMigrations) > 0 {
		e.tasks.Kick() // an adoption may finish a task's step
	}
	resp := api.HeartbeatResponse{Timing: e.agents.Timing(), GossipAddrs: e.agents.GossipAddrs(), RejectedAdoptions: out.Rejected,
		DroppedAdoptions: out.DroppedAdoptions}
	for _, m := range out.AppliedMigrations {
		resp.AppliedMigrations = append(resp.AppliedMigrations, structs.AdoptionRef{VMID: m.VMID, Generation: m.Generation})
	}
	return resp, nil
}

// Desired is what the authenticated node n must run now: its VMs (stopped
// if the node is drained), the migration orders it is the source of, and
// the VMs migrating to it. It does not block: the HTTP layer's blocking
// query waits on the node's index first. The answer's Index is the node's
// desired-state index it was read at.
//
// n is the node as authenticated; the node is read again for its current
// flags, and if it was removed meanwhile the answer is built from n.
func (e *Endpoints) Desired(n *structs.Node) (api.DesiredState, error) {
	vms, idx, err := e.state.VMsOnNode(n.ID)
	if err != nil {
		return api.DesiredState{}, err
	}
	if cur, err := e.state.Node(n.ID); err == nil {
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
		if vm.Held() && vm.Migration.From == n.ID {
			d.Held = true // no order any more: settled on evidence
		} else if m := vm.Migration; m != nil && m.From == n.ID {
			if dest, err := e.state.Node(m.To); err == nil {
				addr := dest.MigrationAddr
				if addr == "" {
					addr = hostOf(dest.APIAddr)
				}
				d.Migrate = &api.MigrationOrder{TaskID: m.TaskID, ToNodeID: dest.ID, DestURI: dest.MigrationURI, MigrateURI: "tcp://" + addr}
			}
		}
		out.VMs = append(out.VMs, d)
	}
	// VMs migrating here: their domains appear before the placement moves.
	if all, err := e.state.MigratingVMs(); err == nil {
		for _, vm := range all {
			if m := vm.Migration; m != nil && m.To == n.ID {
				out.Incoming = append(out.Incoming, api.IncomingVM{ID: vm.ID, Name: vm.Name, Generation: vm.Generation})
			}
		}
	}
	return out, nil
}

// hostOf returns the host part of host:port.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// Migrated records a source agent's result of a migration order: the FSM
// moves the placement when it succeeded for the generation ordered, and
// the task's step records the outcome either way. Only the node the VM is
// migrating from may report.
func (e *Endpoints) Migrated(ctx context.Context, reqID string, n *structs.Node, rep api.MigrationReport) error {
	if err := rep.Validate(); err != nil {
		return err
	}
	reqID = e.requestID(reqID)
	vm, err := e.state.VM(rep.VMID)
	if err != nil {
		return err
	}
	from := vm.NodeID
	if vm.Migration != nil {
		from = vm.Migration.From
	}
	if rep.OK && vm.Migration == nil && vm.NodeID != n.ID && vm.AdoptGeneration != 0 && vm.AdoptGeneration == rep.Generation {
		// Already settled on the destination's evidence (uniqueness rule
		// 8): the report confirms it, nothing is left to record.
		return nil
	}
	if from != n.ID {
		return structs.Forbidden("node %s reports a migration of vm %s, which is placed on %s", n.ID, vm.ID, from)
	}
	if _, err := e.propose.Propose(ctx, reqID, fsm.CmdMigrationEnd, fsm.MigrationEnd{
		VMID: vm.ID, TaskID: rep.TaskID, FromNode: n.ID, Generation: rep.Generation, OK: rep.OK && !rep.Unknown,
		Unknown: rep.Unknown, Error: rep.Error}); err != nil {
		return err
	}
	e.tasks.Kick()
	return nil
}
