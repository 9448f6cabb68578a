package endpoint

import (
	"errors"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// RestartTimeout bounds how long a restart waits for the agent to report
// the VM stopped before it sets it running again and gives up.
const RestartTimeout = 2 * time.Minute

// ErrTimeout is the kind of a refusal after waiting longer than allowed for
// an agent (a restart whose stop was not confirmed). It is not one of the
// structs kinds because it is not a judgement of the request: the HTTP
// layer answers it with 504.
var ErrTimeout = errors.New("timed out waiting for the agent")

// Config is what the endpoints are built from.
type Config struct {
	Proposer Proposer
	State    State
	Placer   Placer
	Tasks    Tasks
	Monitor  Monitor
	Clock    Clock       // bounds the waits for agents
	IDs      IDs         // nil: RandomIDs
	Agents   AgentConfig // timing and gossip addresses for agents' answers
	// StorageRoots are the directories a VM's disks must lie under
	// (--storage-root); none: no disk is accepted. ExcludedPaths (the
	// server's data dir) are never a disk, even under a root.
	StorageRoots  []string
	ExcludedPaths []string
	// CountHeartbeat, when set, is called for every heartbeat that passed
	// authentication and validation and is handed to the monitor (the
	// server's chime_heartbeats_total).
	CountHeartbeat func()
}

// Endpoints carries out the server's operations. It keeps no state of its
// own between calls: every answer is read from the state or decided and
// proposed during the call, so it is safe for concurrent use as far as its
// dependencies are.
//
// Errors are returned as the state, the proposer or the validators give
// them, without added context, because their messages are the API's
// answers (the HTTP layer sends them as they are).
type Endpoints struct {
	propose Proposer
	state   State
	placer  Placer
	tasks   Tasks
	monitor Monitor
	clock   Clock
	ids     IDs
	agents  AgentConfig
	counted func() // heartbeats handed to the monitor
	roots   []string
	exclude []string
}

// New returns the endpoints over cfg.
func New(cfg Config) *Endpoints {
	ids := cfg.IDs
	if ids == nil {
		ids = RandomIDs{}
	}
	counted := cfg.CountHeartbeat
	if counted == nil {
		counted = func() {}
	}
	return &Endpoints{propose: cfg.Proposer, state: cfg.State, placer: cfg.Placer, tasks: cfg.Tasks,
		monitor: cfg.Monitor, clock: cfg.Clock, ids: ids, agents: cfg.Agents, counted: counted,
		roots: cfg.StorageRoots, exclude: cfg.ExcludedPaths}
}

// requestID is the id an operation proposes under, and derives its
// sub-commands' ids from (id+"-drain"). The HTTP layer always gives one;
// a caller that gives none gets a fresh one here, so that two such
// operations are never taken for retries of each other.
func (e *Endpoints) requestID(reqID string) string {
	if reqID == "" {
		return e.ids.NewID()
	}
	return reqID
}

// retriedTask answers a retried task request (same request id) with the
// task the first attempt created.
func (e *Endpoints) retriedTask(reqID string) (*structs.Task, bool) {
	id, err, seen := e.state.Applied(reqID)
	if !seen || err != nil || id == "" {
		return nil, false
	}
	t, terr := e.state.Task(id)
	return t, terr == nil
}
