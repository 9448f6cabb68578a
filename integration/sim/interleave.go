package sim

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/chime-ha/chime/fsm"
)

// Interleaving at proposal boundaries.
//
// A request runs to completion in one simulated instant, so on its own the
// simulator never lets two operations interleave inside an endpoint or a
// task step. In production they do: between its read of the state and each
// Raft commit a request waits (a round trip to the followers, longer under
// load), and another request, a heartbeat or an agent's sync lands
// meanwhile. Decisions that do not compare-and-set on what they read
// (uniqueness rule 11) break exactly there.
//
// The command
//
//	on-propose TYPE N D [CMD...]
//
// arms a pause: the Nth proposal of command type TYPE ("*": any type) made
// from now on by the servers' own code (an operator's request, a leader
// duty; never an agent's own request, which the agent waits on) pauses
// after its proposer has read the state and decided, just before it
// commits. While it is paused CMD runs (any schedule command but create,
// rebuild and on-propose), then D of simulated time passes: the world goes on
// (agents sync, start, heartbeat; the proposal is still uncommitted), then
// the proposal goes on and commits, or is refused by the FSM, or fails
// because its server is no longer the leader. Everything is deterministic:
// the same schedule pauses at the same proposal every run.
//
// While a proposal on server S is paused, S's task runner and pending
// placement do not run (in production they would wait for the placement
// lock the paused decision may hold, or they are the paused decision), and
// an operator's create or rebuild waits until the resume for the same
// reason. Other
// duties (the node monitor, alarms) and every other machine go on.

// pauseTrigger is one armed on-propose.
type pauseTrigger struct {
	typ  string        // a command type, or "*"
	left int           // matching proposals until the pause
	hold time.Duration // simulated time that passes while paused
	cmd  []string      // what runs first while paused (nil: nothing)
	line string        // the command as written, for the trace
}

// interleaving is the simulator's state of on-propose.
type interleaving struct {
	armed []*pauseTrigger
	// paused is the duties of the leader whose proposal is paused (nil:
	// none is).
	paused *leaderDuties
	// pausing is set while a pause runs: no second pause nests in it.
	pausing bool
	// agentCalls counts agents' requests in progress (on the stack).
	agentCalls int
	// waiting are commands held until the resume (creates).
	waiting [][]string
}

// commandTypes are the command types on-propose accepts.
var commandTypes = map[string]bool{"*": true}

func init() {
	for _, t := range []fsm.CommandType{fsm.CmdRegisterNode, fsm.CmdSetManagement, fsm.CmdSetMonitor, fsm.CmdSetNodeFlags,
		fsm.CmdRemoveNode, fsm.CmdCreateVM, fsm.CmdSetDesired, fsm.CmdPlaceVM, fsm.CmdDeleteVM, fsm.CmdObserve, fsm.CmdPutTask,
		fsm.CmdEvent, fsm.CmdMigrationStart, fsm.CmdMigrationEnd, fsm.CmdAdopt, fsm.CmdAlarm, fsm.CmdAlarmSent, fsm.CmdHeartbeat} {
		commandTypes[string(t)] = true
	}
}

// parseOnPropose reads "on-propose TYPE N D [CMD...]".
func parseOnPropose(f []string) (*pauseTrigger, error) {
	if len(f) < 4 {
		return nil, fmt.Errorf("on-propose TYPE N D [CMD...] expected")
	}
	if !commandTypes[f[1]] {
		return nil, fmt.Errorf("on-propose: %q is not a command type (vm.place, node.set_management, ... or *)", f[1])
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < 1 {
		return nil, fmt.Errorf("on-propose: N %q: a count from 1", f[2])
	}
	d, err := time.ParseDuration(f[3])
	if err != nil || d < 0 {
		return nil, fmt.Errorf("on-propose: D %q: a duration", f[3])
	}
	t := &pauseTrigger{typ: f[1], left: n, hold: d, line: strings.Join(f, " ")}
	if len(f) > 4 {
		t.cmd = f[4:]
		switch t.cmd[0] {
		case "on-propose", "create", "rebuild":
			// A create or rebuild takes the placement lock, which the paused
			// decision may hold: it would wait for the resume anyway.
			return nil, fmt.Errorf("on-propose: %s cannot run inside a pause", t.cmd[0])
		}
		if err := checkCmd(t.cmd); err != nil {
			return nil, fmt.Errorf("on-propose: %s: %w", strings.Join(t.cmd, " "), err)
		}
	}
	return t, nil
}

// armPause carries out an on-propose command.
func (s *Sim) armPause(f []string) error {
	t, err := parseOnPropose(f)
	if err != nil {
		return err
	}
	s.inter.armed = append(s.inter.armed, t)
	return nil
}

// beforePropose is called by every proposal of server srv before it
// commits: it counts the proposal against the armed pauses and runs the
// pause whose count it completes.
func (s *Sim) beforePropose(srv *Server, typ fsm.CommandType) {
	in := &s.inter
	if len(in.armed) == 0 || in.pausing || in.agentCalls > 0 {
		return
	}
	var fire *pauseTrigger
	kept := in.armed[:0]
	for _, t := range in.armed {
		if fire == nil && (t.typ == "*" || t.typ == string(typ)) {
			if t.left--; t.left <= 0 {
				fire = t
				continue
			}
		}
		kept = append(kept, t)
	}
	in.armed = kept
	if fire == nil {
		return
	}
	w := s.E
	in.pausing, in.paused = true, srv.lead
	w.trace.Addf("pause", "%s's %s waits before it commits (%s)", srv.Name, typ, fire.line)
	if fire.cmd != nil {
		if err := s.Exec(fire.cmd); err != nil {
			w.trace.Addf("pause", "%s: %v", strings.Join(fire.cmd, " "), err)
		}
	}
	w.RunFor(fire.hold)
	in.pausing, in.paused = false, nil
	w.trace.Addf("pause", "%s's %s goes on", srv.Name, typ)
	if d := srv.lead; d != nil {
		d.changed() // the held duties run their passes now
	}
	waiting := in.waiting
	in.waiting = nil
	for _, cmd := range waiting {
		cmd := cmd
		w.After(0, "", func() {
			if err := s.Exec(cmd); err != nil {
				w.trace.Addf("pause", "%s: %v", strings.Join(cmd, " "), err)
			}
		})
	}
}

// held reports whether the duties d must not run now: a proposal of their
// server is paused (see the package comment above).
func (s *Sim) held(d *leaderDuties) bool { return s.inter.paused != nil && s.inter.paused == d }

// waitsForResume holds a create or rebuild that falls due while a
// proposal is paused until the resume (it would wait for the placement
// lock the paused decision may hold).
func (s *Sim) waitsForResume(f []string) bool {
	if !s.inter.pausing || (f[0] != "create" && f[0] != "rebuild") {
		return false
	}
	s.E.trace.Addf("pause", "%s waits for the paused decision (placement lock)", strings.Join(f, " "))
	s.inter.waiting = append(s.inter.waiting, f)
	return true
}

// interleavedOp draws two operator requests of a random schedule that
// interleave at a proposal boundary: the first is paused before one of its
// proposals (or of the task it starts) while the second runs and a few
// seconds pass (uniqueness rule 11's races: rebuild against enable, cold
// move against start, enable against drain).
func interleavedOp(g *gen) []step {
	h, vm := g.host(), g.vm()
	firsts := [][]string{{"rebuild", h}, {"rebuild", h, "confirm-if-fenced"}, {"enable", h}, {"drain", h}, {"evacuate", h}, {"disable", h}, {"migrate", vm}}
	seconds := [][]string{{"enable", h}, {"drain", h}, {"disable", h}, {"start", vm}, {"stop", vm}, {"delete", vm}} // no create or rebuild: parseOnPropose
	types := []string{"vm.place", "node.set_management", "node.set_flags", "vm.migration_start", "task.put", "*"}
	first := firsts[g.r.IntN(len(firsts))]
	second := seconds[g.r.IntN(len(seconds))]
	arm := append([]string{"on-propose", types[g.r.IntN(len(types))], fmt.Sprint(1 + g.r.IntN(2)), fmt.Sprintf("%ds", g.r.IntN(8))}, second...)
	steps := []step{}
	if first[0] == "rebuild" {
		steps = append(steps, step{0, []string{"drain", h}})
		d := g.dur(20*time.Second, 90*time.Second)
		steps = append(steps, step{d, arm}, step{d, first})
		return append(steps, step{d + g.dur(30*time.Second, 2*time.Minute), []string{"enable", h}})
	}
	steps = append(steps, step{0, arm}, step{0, first})
	if first[0] != "migrate" {
		steps = append(steps, step{g.dur(30*time.Second, 2*time.Minute), []string{"enable", h}})
	}
	return steps
}
