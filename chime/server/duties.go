package server

import (
	"context"
	"time"

	"github.com/chime-ha/chime/chime/server/alarms"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/server/hapolicy"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/server/placement"
	"github.com/chime-ha/chime/chime/server/recovery"
	"github.com/chime-ha/chime/chime/server/tasks"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/scheduler"
)

// Clock is the server's time: propose stamps every command with Now, the
// leader's duties measure their timeouts on it (always between two of
// their own readings, never against a stamp in the state, which another
// server may have written), and the endpoints bound their waits with
// After.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// wallClock is the clock in production.
type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// setupDuties constructs the placer, the task runner, the alarmer and the
// heartbeat monitor over this server's FSM, propose and clock (they run
// only while leader, in lead), and the endpoints the handlers call.
func (s *Server) setupDuties() error {
	amClient, err := alarms.AlertmanagerClient(s.cfg.AlertmanagerCAFile)
	if err != nil {
		return err
	}
	s.placer = placement.New(placement.Config{
		State: s.fsm, Proposer: s,
		Options:    scheduler.Options{Strategy: scheduler.Strategy(s.cfg.Scheduler), CPUOvercommit: s.cfg.CPUOvercommit},
		HATolerate: s.cfg.HATolerateFailures,
		Logger:     s.log.Named("placement"),
	})
	s.guard = hapolicy.New(hapolicy.Config{State: s.fsm, Proposer: s, Reserver: s.placer, Share: s.cfg.HABrakeShare,
		LeaseMargin: s.cfg.IsolationLeaseMargin,
		Logger:      s.log.Named("hapolicy")})
	s.taskRunner = tasks.New(tasks.Config{State: s.fsm, Proposer: s, Placer: s.placer, Clock: s.clock,
		Logger: s.log.Named("tasks")})
	s.alarmer = alarms.New(alarms.Config{State: s.fsm, Proposer: s, Clock: s.clock,
		Webhooks: s.cfg.AlarmWebhook, ExternalURL: s.cfg.APIURL(),
		Alertmanagers: s.cfg.Alertmanagers, Resend: s.cfg.AlertmanagerResend, Cluster: s.cfg.ClusterName,
		AlertmanagerClient: amClient,
		CountDelivery:      func(result string) { s.met.alarmsSent.WithLabelValues(result).Inc() },
		Extra:              s.guard.Alarms,
		Logger:             s.log.Named("alarms")})
	s.hb = heartbeat.New(heartbeat.Config{Interval: s.cfg.HeartbeatInterval, Missed: s.cfg.MissedHeartbeats,
		Proposer: s, State: s.fsm, Clock: s.clock, Pinger: s.pingClient(), Gossip: s.pool,
		Logger: s.log})
	var fencer recovery.Fencer
	if s.cfg.FenceCommand != "" {
		fencer = commandFencer{path: s.cfg.FenceCommand, timeout: s.cfg.FenceTimeout}
	}
	s.recovery = recovery.New(recovery.Config{Proposer: s, State: s.fsm, Silence: s.hb, Placer: s.placer,
		Fencer: fencer, Brake: s.guard, Clock: s.clock, MaxRestarts: s.cfg.HAMaxRestarts, MaxFenceAttempts: s.cfg.FenceRetries,
		LeaseMargin: s.cfg.IsolationLeaseMargin,
		Logger:      s.log})
	s.ep = endpoint.New(endpoint.Config{Proposer: s, State: s.fsm, Placer: s.placer, Tasks: s.taskRunner,
		Monitor: s.hb, Clock: s.clock, IDs: endpoint.RandomIDs{}, Agents: agentConfig{s},
		CountHeartbeat: s.met.heartbeats.Inc, StorageRoots: s.cfg.StorageRoots, ExcludedPaths: []string{s.cfg.DataDir}})
	return nil
}

// Propose applies a command through Raft on the leader: the proposer the
// leader's duties and the endpoints are given (each declares it).
func (s *Server) Propose(ctx context.Context, reqID string, typ fsm.CommandType, payload any) (*fsm.Result, error) {
	return s.propose(ctx, reqID, typ, payload)
}
