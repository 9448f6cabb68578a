package server

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// leaderLoop runs the leader's duties while this server is leader.
func (s *Server) leaderLoop(ctx context.Context) {
	var stop context.CancelFunc
	var wg sync.WaitGroup
	end := func() {
		if stop != nil {
			stop()
			wg.Wait()
			stop = nil
		}
	}
	defer end()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-s.raft.LeaderCh():
			end()
			if !isLeader {
				s.log.Info("leadership lost")
				continue
			}
			s.log.Info("leadership acquired")
			lctx, cancel := context.WithCancel(ctx)
			stop = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.lead(lctx)
			}()
		}
	}
}

func (s *Server) lead(ctx context.Context) {
	// Apply everything committed by earlier leaders before deciding anything.
	if err := s.raft.Barrier(30 * time.Second).Error(); err != nil {
		s.log.Warn("barrier failed", "error", err)
		return
	}
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context){s.hb.Run, s.alarmer.Run, s.placer.Run, s.peerLoop, s.taskRunner.Run, s.recovery.Run} {
		wg.Add(1)
		go func(fn func(context.Context)) {
			defer wg.Done()
			fn(ctx)
		}(fn)
	}
	wg.Wait()
}

// peerLoop adds servers that gossip knows and Raft does not as voters, so
// that a server started later with --join becomes part of the cluster.
func (s *Server) peerLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f := s.raft.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		known := map[raft.ServerID]bool{}
		for _, sv := range f.Configuration().Servers {
			known[sv.ID] = true
		}
		for _, m := range s.pool.Servers() {
			id := raft.ServerID(m.Meta["id"])
			if id == "" || known[id] || m.Meta["raft"] == "" {
				continue
			}
			if err := s.raft.AddVoter(id, raft.ServerAddress(m.Meta["raft"]), 0, 10*time.Second).Error(); err != nil {
				s.log.Warn("add raft voter failed", "server", id, "error", err)
				continue
			}
			s.log.Info("server joined the raft cluster", "server", id)
		}
	}
}
