package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
)

// register registers the node, retrying with back-off until it succeeds or
// ctx ends.
func (a *Agent) register(ctx context.Context) error {
	log := a.logger.Named("register")
	for attempt := 0; ; attempt++ {
		err := a.RegisterOnce(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := clock.Backoff(attempt)
		log.Warn("registration failed; retrying", "error", err, "in", d.String())
		if !clock.Sleep(ctx, a.clock, d) {
			return ctx.Err()
		}
	}
}

// RegisterOnce registers the node once: it reads the capacity from
// libvirt, makes and persists the node secret on first use, sends the
// registration and keeps the secret, timing and gossip addresses the
// servers answer with. Later requests carry the node's credentials.
func (a *Agent) RegisterOnce(ctx context.Context) error {
	vcpus, mem, err := a.hv.Capacity(ctx)
	if err != nil {
		return fmt.Errorf("capacity from libvirt: %w", err)
	}
	secret, err := a.store.Secret()
	if err != nil {
		return err
	}
	if secret == "" {
		// The agent makes its own secret and persists it before the first
		// registration, so that a retried registration (answer lost) is
		// idempotent: the servers store its hash once.
		var b [32]byte
		if _, err := io.ReadFull(a.random, b[:]); err != nil {
			return fmt.Errorf("node secret: %w", err)
		}
		secret = hex.EncodeToString(b[:])
		if err := a.store.SetSecret(secret); err != nil {
			return err
		}
	}
	adv := a.cfg.AdvertiseAddr()
	migAddr := a.cfg.MigrationAddr
	if migAddr == "" {
		migAddr = adv
	}
	req := api.RegisterRequest{
		ID: a.nodeID, Name: a.cfg.Name, Secret: secret,
		APIAddr:            a.apiAdvertised(),
		GossipAddr:         a.gossipAdvertised(),
		MigrationURI:       handover.LibvirtURI(adv),
		MigrationAddr:      migAddr,
		BusinessInterface:  a.cfg.BusinessInterface,
		IsolationResponse:  a.cfg.isolationResponse(),
		IsolationLease:     a.cfg.isolationLease(),
		IsolationStopBound: a.cfg.isolationStopBound(),
		Watchdog:           a.watchdog != nil,
		VCPUs:              vcpus, MemoryMiB: mem,
		Labels:       a.cfg.Labels,
		AgentVersion: structs.Version,
		HostUUID:     a.hostUUID,
		MachineID:    a.machineID,
	}
	a.servers.SetCredentials("", "")
	a.setRegistered(false)
	resp, err := a.servers.Register(ctx, req)
	a.noteContact(err)
	if errors.Is(err, structs.ErrForbidden) {
		// The servers know this node under another secret (the data dir
		// was lost or wiped) and did not let this agent in with the join
		// credential: it has none, or the node is bound to another host
		// identity (the error says which facts differ).
		a.logger.Error("registration refused: the servers hold another secret for this node, and the join credential with this host's identity did not replace it; see the error and the runbook (`chime node reset-secret`)",
			"node_id", a.nodeID, "host_uuid", a.hostUUID, "error", err)
	}
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if resp.NodeID != "" && resp.NodeID != a.nodeID {
		return fmt.Errorf("register: servers answered for node %s, not %s", resp.NodeID, a.nodeID)
	}
	if resp.Secret != "" && resp.Secret != secret {
		if err := a.store.SetSecret(resp.Secret); err != nil {
			return err
		}
		secret = resp.Secret
	}
	a.servers.SetCredentials(a.nodeID, secret)
	a.setRegistered(true)
	a.setTiming(resp.Timing)
	a.setGossipAddrs(resp.GossipAddrs)
	a.logger.Info("registered", "node_id", a.nodeID, "vcpus", vcpus, "memory_mib", mem,
		"heartbeat_interval", a.heartbeatInterval().String())
	return nil
}
