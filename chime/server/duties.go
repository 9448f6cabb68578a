package server

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/server/tasks"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// wallClock is the clock the leader's duties run on in production. Task
// timestamps are stamped by propose with time.Now, so the runner's
// timeouts are measured on the same clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// setupDuties constructs the placer, the task runner and the alarmer over
// this server's FSM and propose. They run only while leader (lead).
func (s *Server) setupDuties() {
	s.placer = placement.New(placement.Config{
		State: s.fsm, Proposer: s,
		Options: scheduler.Options{Strategy: scheduler.Strategy(s.cfg.Scheduler), CPUOvercommit: s.cfg.CPUOvercommit},
		Logger:  s.log.Named("placement"),
	})
	s.taskRunner = tasks.New(tasks.Config{State: s.fsm, Proposer: s, Placer: s.placer, Clock: wallClock{},
		Logger: s.log.Named("tasks")})
	s.alarmer = alarms.New(alarms.Config{State: s.fsm, Proposer: s, Clock: wallClock{},
		Webhooks: s.cfg.AlarmWebhook, ExternalURL: s.cfg.APIURL(),
		CountDelivery: func(result string) { s.met.alarmsSent.WithLabelValues(result).Inc() },
		Logger:        s.log.Named("alarms")})
}

// Propose applies a command through Raft on the leader: the proposer the
// leader's duties are given (heartbeat, tasks, placement, alarms declare it).
func (s *Server) Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	return s.propose(ctx, reqID, typ, payload)
}

// kickTasks wakes the task runner (a task was created, a step's result
// arrived).
func (s *Server) kickTasks() { s.taskRunner.Kick() }

// kickPlacement wakes the placement loop (capacity may have appeared).
func (s *Server) kickPlacement() { s.placer.Kick() }
