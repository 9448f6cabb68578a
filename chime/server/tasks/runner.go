package tasks

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// MigrationTimeout bounds how long the leader waits for the source agent's
// result of one live migration step, from when this leader took the step
// over. The agent's own libvirt job timeout (10 min) is shorter, so the
// agent gives up first. Past it the outcome is unknown (not failed): the
// VM is held until a host proves where it runs.
const MigrationTimeout = 15 * time.Minute

// StepDecideTimeout bounds how long a step waits for a VM's state to be
// known before it fails, from when this leader took the step over.
const StepDecideTimeout = 2 * time.Minute

// runEvery is how often the loop runs without a wake-up.
const runEvery = 2 * time.Second

// errRetryLater leaves a step pending for the next round of the runner.
var errRetryLater = errors.New("retry later")

// Config is what a Runner needs.
type Config struct {
	State    State
	Proposer Proposer
	Placer   Placer
	Clock    Clock
	Logger   hclog.Logger // named server.tasks by the server
}

// Runner advances replicated tasks while its server is leader. Every
// decision is read from the state, and every task update is a
// compare-and-set on the task's modify index, so a runner holding an older
// copy loses instead of overwriting an outcome recorded meanwhile. The one
// thing it keeps in memory is when it first saw each waiting step as
// leader (uniqueness rule 8): timeouts are measured from there, on this
// server's clock, and a new leader (or a new term: Run) starts counting
// afresh, so no timeout is ever measured against another server's clock.
type Runner struct {
	state   State
	propose Proposer
	placer  Placer
	clock   Clock
	log     hclog.Logger

	kick chan struct{} // wakes the loop (a task was created, a result arrived)

	mu   sync.Mutex
	seen map[string]time.Time // step wait (task/vm/what) → when this leader first saw it waiting
}

// New returns a Runner.
func New(cfg Config) *Runner {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Runner{state: cfg.State, propose: cfg.Proposer, placer: cfg.Placer, clock: cfg.Clock, log: cfg.Logger,
		kick: make(chan struct{}, 1), seen: map[string]time.Time{}}
}

// Kick wakes the loop.
func (r *Runner) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run advances tasks until ctx ends (leadership lost): on every state
// change, on Kick, and every 2 s.
func (r *Runner) Run(ctx context.Context) {
	r.mu.Lock()
	r.seen = map[string]time.Time{} // a new term: every wait is counted from now
	r.mu.Unlock()
	for {
		ch, _ := r.state.Changed()
		_ = r.Step(ctx) // each failure is logged by Step
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-r.kick:
		case <-time.After(runEvery):
		}
	}
}

// Step is one pass over the pending and running tasks: each advances by at
// most one step. A lost compare-and-set (structs.ErrConflict) is not an
// error: the next pass reads the newer state. Other failures are logged
// and returned joined.
func (r *Runner) Step(ctx context.Context) error {
	tasks, err := r.state.Tasks()
	if err != nil {
		r.log.Warn("read tasks failed", "error", err)
		return fmt.Errorf("read tasks: %w", err)
	}
	r.forgetFinished(tasks)
	var errs []error
	for _, t := range tasks {
		if ctx.Err() != nil {
			return errors.Join(append(errs, ctx.Err())...)
		}
		if t.State != structs.TaskPending && t.State != structs.TaskRunning {
			continue
		}
		if err := r.advance(ctx, t); err != nil && !errors.Is(err, structs.ErrConflict) {
			r.log.Warn("task step failed", "task", t.ID, "kind", t.Kind, "error", err)
			errs = append(errs, fmt.Errorf("%s task %s: %w", t.Kind, t.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Create writes a new task through Raft, wakes the loop, and returns the
// task as recorded. reqID is the client's request id (a retry is applied
// once).
func (r *Runner) Create(ctx context.Context, reqID string, t structs.Task) (*structs.Task, error) {
	if t.ID == "" {
		t.ID = uuid.NewString()
	}
	if t.State == "" {
		t.State = structs.TaskPending
	}
	if _, err := r.propose.Propose(ctx, reqID, fsm.CmdPutTask, fsm.PutTask{Task: t}); err != nil {
		return nil, err
	}
	r.Kick()
	return r.state.Task(t.ID)
}

// ActiveFor returns a pending or running task touching the VM (a step of
// it not yet done) or the node, or nil.
func (r *Runner) ActiveFor(vmID, nodeID string) *structs.Task {
	tasks, err := r.state.Tasks()
	if err != nil {
		r.log.Warn("read tasks failed", "error", err)
		return nil
	}
	return ActiveFor(tasks, vmID, nodeID)
}

// ActiveFor returns the first of tasks that is pending or running and
// touches the VM (a step of it not yet done) or the node, or nil.
func ActiveFor(tasks []structs.Task, vmID, nodeID string) *structs.Task {
	for _, t := range tasks {
		if t.State != structs.TaskPending && t.State != structs.TaskRunning {
			continue
		}
		if nodeID != "" && t.NodeID == nodeID {
			return &t
		}
		for _, st := range t.Steps {
			if vmID != "" && st.VMID == vmID && (st.State == structs.TaskPending || st.State == structs.TaskRunning) {
				return &t
			}
		}
	}
	return nil
}

// waited returns how long this runner has seen the wait named key (a task,
// a VM, what it waits for) since it first saw it; the first call starts
// the count at zero.
func (r *Runner) waited(key string) time.Duration {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	first, ok := r.seen[key]
	if !ok {
		r.seen[key] = now
		return 0
	}
	return now.Sub(first)
}

// forgetFinished drops the waits of tasks no longer pending or running.
func (r *Runner) forgetFinished(tasks []structs.Task) {
	active := map[string]bool{}
	for _, t := range tasks {
		if t.State == structs.TaskPending || t.State == structs.TaskRunning {
			active[t.ID] = true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for key := range r.seen {
		if id, _, _ := strings.Cut(key, "/"); !active[id] {
			delete(r.seen, key)
		}
	}
}

func waitKey(taskID, vmID, what string) string { return taskID + "/" + vmID + "/" + what }

// put writes a task with compare-and-set on its modify index.
func (r *Runner) put(ctx context.Context, t structs.Task, ifIndex uint64) error {
	_, err := r.propose.Propose(ctx, "", fsm.CmdPutTask, fsm.PutTask{Task: t, IfModifyIndex: ifIndex})
	return err
}

func (r *Runner) advance(ctx context.Context, t structs.Task) error {
	switch t.Kind {
	case structs.TaskMigrate, structs.TaskEvacuate:
		return r.advanceMigrations(ctx, t)
	case structs.TaskDrain:
		return r.advanceDrain(ctx, t)
	}
	return nil // rebuild and adopt tasks are written finished
}
