package agent

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/gossip"
)

// gossipRejoinInterval is how often a lonely pool retries joining the servers.
const gossipRejoinInterval = 5 * time.Second

// startGossip joins nobody yet: the servers' gossip addresses come with the
// registration answer. Gossip is a hint for the servers' ping-back; nothing
// the agent decides depends on it.
func (a *Agent) startGossip(ctx context.Context) (*gossip.Pool, error) {
	keys, ignored, err := gossip.ResolveKeys(a.cfg.DataDir, a.cfg.GossipKey)
	if err != nil {
		return nil, err
	}
	if ignored {
		a.logger.Warn("--gossip-key is not in the keyring file; the keyring file wins", "file", filepath.Join(a.cfg.DataDir, gossip.KeyringFile))
	}
	var key []byte
	var extra [][]byte
	if len(keys) > 0 {
		key, extra = keys[0], keys[1:]
	} else {
		a.logger.Warn("gossip is not encrypted (--insecure-no-gossip-key)")
	}
	bind := a.cfg.Bind
	if bind == "" {
		bind = DefaultBind
	}
	return gossip.Start(ctx, gossip.Config{
		Name:          a.nodeID,
		BindAddr:      bind,
		BindPort:      a.cfg.GossipPort,
		AdvertiseAddr: a.cfg.AdvertiseAddr(),
		Key:           key,
		ExtraKeys:     extra,
		KeyringDir:    a.cfg.DataDir,
		Meta:          map[string]string{gossip.MetaRole: gossip.RoleAgent, gossip.MetaAPI: a.apiAdvertised()},
		Logger:        a.logger,
	})
}

// gossipAdvertised is the host:port the servers reach this agent's gossip at.
func (a *Agent) gossipAdvertised() string {
	port := a.cfg.GossipPort
	if a.pool != nil {
		if _, p, err := net.SplitHostPort(a.pool.LocalAddr()); err == nil {
			port, _ = strconv.Atoi(p)
		}
	}
	return net.JoinHostPort(a.cfg.AdvertiseAddr(), strconv.Itoa(port))
}

// apiAdvertised is the host:port the servers ping this agent's API at.
func (a *Agent) apiAdvertised() string {
	port := a.cfg.APIPort
	if addr, ok := a.APIAddr().(*net.TCPAddr); ok && addr != nil {
		port = addr.Port
	}
	return net.JoinHostPort(a.cfg.AdvertiseAddr(), strconv.Itoa(port))
}

func (a *Agent) setGossipAddrs(addrs []string) {
	if len(addrs) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gossipAddrs = slices.Clone(addrs)
}

// gossipLoop joins the servers' pool and joins again whenever this member
// finds itself alone (after a partition, or when the servers restarted).
func (a *Agent) gossipLoop(ctx context.Context) {
	log := a.logger.Named("gossip")
	for {
		a.mu.Lock()
		addrs := slices.Clone(a.gossipAddrs)
		a.mu.Unlock()
		if len(addrs) > 0 && a.pool.NumMembers() <= 1 {
			if n, err := a.pool.Join(ctx, addrs); err != nil {
				log.Warn("cannot join the servers' gossip pool", "error", err)
			} else {
				log.Info("joined gossip pool", "reached", n)
			}
		}
		if !clock.Sleep(ctx, a.clock, gossipRejoinInterval) {
			return
		}
	}
}
