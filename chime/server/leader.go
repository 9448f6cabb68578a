package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
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
	for _, fn := range []func(context.Context){s.hb.Run, s.alarms.run, s.placementLoop, s.peerLoop, s.taskLoop} {
		wg.Add(1)
		go func(fn func(context.Context)) {
			defer wg.Done()
			fn(ctx)
		}(fn)
	}
	wg.Wait()
}

// kickPlacement wakes the placement loop (capacity may have appeared).
func (s *Server) kickPlacement() {
	select {
	case s.placeKick <- struct{}{}:
	default:
	}
}

// placementLoop places pending VMs as soon as a node fits.
func (s *Server) placementLoop(ctx context.Context) {
	for {
		ch, _ := s.fsm.Changed()
		s.placePending(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-s.placeKick:
		case <-time.After(10 * time.Second):
		}
	}
}

func (s *Server) placePending(ctx context.Context) {
	s.placeMu.Lock()
	defer s.placeMu.Unlock()
	vms, err := s.fsm.VMs()
	if err != nil {
		return
	}
	for _, vm := range vms {
		if vm.NodeID != "" || ctx.Err() != nil {
			continue
		}
		nodeID, err := s.place(vm, nil)
		if errors.Is(err, scheduler.ErrNoCapacity) || err != nil {
			continue
		}
		// Compare-and-set on the pending state (generation 0 cannot be
		// asserted, so check the VM is still unplaced right before).
		if cur, err := s.fsm.VM(vm.ID); err != nil || cur.NodeID != "" {
			continue
		}
		if _, err := s.propose(ctx, "", fsm.CmdPlaceVM, fsm.PlaceVM{VMID: vm.ID, NodeID: nodeID, Reason: "pending VM placed"}); err != nil {
			s.log.Warn("place pending vm failed", "vm", vm.Name, "error", err)
			continue
		}
		s.log.Info("pending vm placed", "vm", vm.Name, "node", nodeID)
	}
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

var _ = structs.StatePending
