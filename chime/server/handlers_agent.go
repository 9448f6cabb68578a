package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
)

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func newSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// authenticate checks an agent's node id and secret headers.
func (s *Server) authenticate(r *http.Request) (*structs.Node, error) {
	id, secret := r.Header.Get(api.HeaderNode), r.Header.Get(api.HeaderSecret)
	if id == "" || secret == "" {
		return nil, &api.Error{Status: http.StatusUnauthorized, Message: "agent credentials missing (" + api.HeaderNode + ", " + api.HeaderSecret + ")"}
	}
	n, err := s.fsm.Node(id)
	if err != nil {
		return nil, &api.Error{Status: http.StatusUnauthorized, Field: "node_id", Message: "unknown node " + id + ": register first"}
	}
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(s.fsm.NodeSecretHash(n.ID))) != 1 {
		return nil, structs.Forbidden("node %s: wrong secret", id)
	}
	return n, nil
}

func (s *Server) timing() api.Timing {
	return api.Timing{HeartbeatInterval: s.cfg.HeartbeatInterval, MissedHeartbeats: s.cfg.MissedHeartbeats}
}

// gossipAddrs lists the servers' memberlist addresses for agents; it is
// cached for a few seconds because every heartbeat answer carries it.
func (s *Server) gossipAddrs() []string {
	s.gossipMu.Lock()
	defer s.gossipMu.Unlock()
	if time.Since(s.gossipAt) < 5*time.Second && s.gossipCache != nil {
		return s.gossipCache
	}
	var out []string
	for _, m := range s.pool.Servers() {
		out = append(out, m.Addr+":"+itoa(m.Port))
	}
	sort.Strings(out)
	s.gossipCache, s.gossipAt = out, time.Now()
	return out
}

// handleRegister creates a node or re-registers an existing one. A known
// node id must present its secret: nobody else may take over a node.
func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.RegisterRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	secret := req.Secret
	if secret == "" {
		secret = newSecret()
	} else if len(secret) < 32 {
		return nil, structs.Invalid("secret", "must be at least 32 characters (the agent generates 64 hex characters)")
	}
	if existing, err := s.fsm.Node(req.ID); err == nil {
		if req.Secret == "" || subtle.ConstantTimeCompare([]byte(hashSecret(req.Secret)), []byte(s.fsm.NodeSecretHash(existing.ID))) != 1 {
			return nil, structs.Forbidden("node %s is registered already: its agent must present its secret (remove the node first to register it anew)", req.ID)
		}
	} else if !structs.IsNotFound(err) {
		return nil, err
	}
	node := structs.Node{ID: req.ID, Name: req.Name, APIAddr: req.APIAddr, GossipAddr: req.GossipAddr,
		MigrationURI: req.MigrationURI, MigrationAddr: req.MigrationAddr, BusinessInterface: req.BusinessInterface,
		VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Labels: req.Labels, AgentVersion: req.AgentVersion}
	if _, err := s.propose(r.Context(), r.Header.Get(api.HeaderRequestID), fsm.CmdRegisterNode,
		fsm.RegisterNode{Node: node, SecretHash: hashSecret(secret)}); err != nil {
		return nil, err
	}
	s.mon.heartbeat(req.ID, nil)
	s.kickPlacement()
	return api.RegisterResponse{NodeID: req.ID, Secret: secret, Timing: s.timing(), GossipAddrs: s.gossipAddrs()}, nil
}

// handleHeartbeat is where a heartbeat arrives: its time is kept in the
// leader's memory (never written per heartbeat), and only what changed
// (observations, faults, drain flags) goes through Raft.
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	var hb api.HeartbeatRequest
	if err := decode(r, &hb); err != nil {
		return nil, err
	}
	if err := hb.Validate(); err != nil {
		return nil, err
	}
	if hb.NodeID != n.ID {
		return nil, structs.Forbidden("heartbeat for node %s sent with the credentials of node %s", hb.NodeID, n.ID)
	}
	s.met.heartbeats.Inc()
	rejected, err := s.recordAdoptions(r, n, hb)
	if err != nil {
		return nil, err
	}
	if err := s.recordObservations(r, n, hb); err != nil {
		return nil, err
	}
	s.mon.heartbeat(n.ID, &hb)
	return api.HeartbeatResponse{Timing: s.timing(), GossipAddrs: s.gossipAddrs(), Index: s.fsm.Index(), RejectedAdoptions: rejected}, nil
}

// recordObservations writes the observations that differ from the state,
// and the node's drain flags when they changed.
func (s *Server) recordObservations(r *http.Request, n *structs.Node, hb api.HeartbeatRequest) error {
	var changed []structs.VMObservation
	for _, o := range hb.VMs {
		vm, err := s.fsm.VM(o.VMID)
		if err != nil {
			continue
		}
		ob := vm.Observed
		if m := vm.Migration; m != nil && m.To == n.ID {
			continue // the incoming copy of a live migration in flight
		}
		current := o.Generation >= vm.Generation || (vm.AdoptGeneration != 0 && o.Generation == vm.AdoptGeneration)
		if vm.NodeID != n.ID || !current {
			if o.State == structs.StateRunning {
				changed = append(changed, o) // recorded as a stale-copy event
			}
			continue
		}
		if ob == nil || ob.NodeID != n.ID || ob.State != o.State || ob.Reason != o.Reason || ob.Generation != o.Generation {
			changed = append(changed, o)
		}
	}
	// A placed VM the agent no longer lists is gone from libvirt: stopped
	// (unless libvirt could not be listed at all).
	placed, _, err := s.fsm.VMsOnNode(n.ID)
	if err != nil {
		return err
	}
	if hb.VMsUnknown {
		placed = nil
	}
	listed := map[string]bool{}
	for _, o := range hb.VMs {
		listed[o.VMID] = true
	}
	allStopped := true
	for _, vm := range placed {
		if !listed[vm.ID] && vm.Migration == nil && vm.Observed != nil && vm.Observed.NodeID == n.ID && vm.Observed.State != structs.StateStopped {
			changed = append(changed, structs.VMObservation{VMID: vm.ID, State: structs.StateStopped, Reason: "undefined", Generation: vm.Generation})
		}
	}
	for _, o := range hb.VMs {
		if o.State == structs.StateRunning {
			allStopped = false
		}
	}
	if len(changed) > 0 {
		if _, err := s.propose(r.Context(), "", fsm.CmdObserve, fsm.Observe{NodeID: n.ID, Observations: changed}); err != nil {
			return err
		}
	}
	flags := fsm.SetNodeFlags{NodeID: n.ID}
	dirty := false
	if hb.LocalDrained != n.LocalDrained {
		v := hb.LocalDrained
		flags.LocalDrained, dirty = &v, true
	}
	if hb.LocalDrainID != "" && hb.LocalDrainID != n.LocalDrainID {
		v := hb.LocalDrainID
		flags.LocalDrainID, dirty = &v, true
	}
	if acked := n.ManagementState == structs.NodeDrained && allStopped && !hb.VMsUnknown; acked && !n.DrainAcked {
		flags.DrainAcked, dirty = &acked, true
	}
	if dirty {
		if _, err := s.propose(r.Context(), "", fsm.CmdSetNodeFlags, flags); err != nil {
			return err
		}
	}
	return nil
}

// handleDesired answers an agent's blocking query for what it must run.
func (s *Server) handleDesired(w http.ResponseWriter, r *http.Request) (any, error) {
	n, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	if _, err := s.block(r, func() uint64 { return s.fsm.NodeIndex(n.ID) }); err != nil {
		return nil, err
	}
	vms, idx, err := s.fsm.VMsOnNode(n.ID)
	if err != nil {
		return nil, err
	}
	if cur, err := s.fsm.Node(n.ID); err == nil {
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
			if dest, err := s.fsm.Node(m.To); err == nil {
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
	if all, err := s.fsm.VMs(); err == nil {
		for _, vm := range all {
			if m := vm.Migration; m != nil && m.To == n.ID {
				out.Incoming = append(out.Incoming, api.IncomingVM{ID: vm.ID, Name: vm.Name, Generation: vm.Generation})
			}
		}
	}
	setIndex(w, idx)
	return out, nil
}

// recordAdoptions turns the domains an agent adopted by node-local
// migration into placements, when the generation still matches; refused
// ones are returned for the agent to destroy, and raise an alarm (a failed
// adopt task).
func (s *Server) recordAdoptions(r *http.Request, n *structs.Node, hb api.HeartbeatRequest) ([]string, error) {
	var rejected []string
	for _, o := range hb.Adopted {
		vm, err := s.fsm.VM(o.VMID)
		if err == nil && vm.NodeID == n.ID && (vm.AdoptGeneration == o.Generation || vm.Generation == o.Generation) {
			continue // already adopted
		}
		_, err = s.propose(r.Context(), "", fsm.CmdAdopt, fsm.Adopt{VMID: o.VMID, NodeID: n.ID, Generation: o.Generation})
		if err == nil {
			s.kickTasks()
			continue
		}
		if !errors.Is(err, structs.ErrConflict) && !errors.Is(err, structs.ErrNotFound) {
			return nil, err
		}
		rejected = append(rejected, o.VMID)
		t := structs.Task{ID: fmt.Sprintf("adopt-%s-%d-%s", short8(o.VMID), o.Generation, short8(n.ID)), Kind: structs.TaskAdopt,
			NodeID: n.ID, VMID: o.VMID, State: structs.TaskFailed,
			Error: fmt.Sprintf("node %s adopted vm %s (generation %d) by node-local migration, refused: %v; the adopted copy is destroyed", n.Name, o.VMID, o.Generation, err)}
		if existing, terr := s.fsm.Task(t.ID); terr != nil || existing.State != structs.TaskFailed {
			if _, perr := s.propose(r.Context(), "", fsm.CmdPutTask, fsm.PutTask{Task: t}); perr != nil {
				return nil, perr
			}
		}
	}
	return rejected, nil
}

// hostOf returns the host part of host:port.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
