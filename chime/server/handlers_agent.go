package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/heartbeat"
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
		out = append(out, m.Addr+":"+strconv.Itoa(m.Port))
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
	s.hb.Registered(req.ID)
	s.kickPlacement()
	return api.RegisterResponse{NodeID: req.ID, Secret: secret, Timing: s.timing(), GossipAddrs: s.gossipAddrs()}, nil
}

// handleHeartbeat is where a heartbeat arrives: authenticated, decoded
// and validated here, then handed whole to the heartbeat monitor, which
// notes its arrival in the leader's memory and writes what it changes as
// at most one Raft entry.
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
	// The batch is about the authenticated node and nothing else: its
	// items carry no node of their own, and the monitor judges each of
	// them against n.
	if hb.NodeID != n.ID {
		return nil, structs.Forbidden("heartbeat for node %s sent with the credentials of node %s", hb.NodeID, n.ID)
	}
	s.met.heartbeats.Inc()
	out, err := s.hb.Heartbeat(r.Context(), n, heartbeat.Report{Faults: hb.Faults, VMs: hb.VMs, VMsUnknown: hb.VMsUnknown,
		LocalDrained: hb.LocalDrained, LocalDrainID: hb.LocalDrainID, Adopted: hb.Adopted, Migrations: hb.Migrations})
	if err != nil {
		return nil, err
	}
	if len(out.Adopted) > 0 {
		s.kickTasks()
	}
	return api.HeartbeatResponse{Timing: s.timing(), GossipAddrs: s.gossipAddrs(), RejectedAdoptions: out.Rejected}, nil
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

// hostOf returns the host part of host:port.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
