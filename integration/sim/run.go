package sim

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// RunOptions change how Run runs a schedule.
type RunOptions struct {
	// Echo receives every trace line as it is written (-sim.v).
	Echo io.Writer
	// Dir is where state files go (default: a fresh directory, removed).
	Dir string
	// Parent is where that fresh directory is made (default /dev/shm when
	// it exists, else the system's temporary directory).
	Parent string
}

// Result is what one run of a schedule found.
type Result struct {
	Schedule   *Schedule
	Violations []Violation
	Trace      []byte
	TraceHash  uint64
	// Log is the golden log: the operator's requests and answers, the
	// leader's event log with ids replaced by names, and the checker's
	// verdicts.
	Log     string
	Steps   uint64
	SimTime time.Duration
	Wall    time.Duration
	// Network counts the run's requests by outcome.
	Network map[string]uint64
}

// Failed reports whether an invariant was broken.
func (r *Result) Failed() bool { return len(r.Violations) > 0 }

// Tail returns the last n lines of the trace.
func (r *Result) Tail(n int) string {
	lines := strings.SplitAfter(strings.TrimRight(string(r.Trace), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "") + "\n"
}

// Run runs one schedule: the boot phase, every item at its offset, the
// heal, the quiet period, the final checks.
func Run(sc *Schedule, opts RunOptions) (*Result, error) {
	wall := time.Now()
	cfg := Config{Seed: sc.Seed, Hosts: sc.Hosts, HATolerate: sc.HATolerate, Dir: opts.Dir, Parent: opts.Parent, HA: sc.HA}
	if sc.HA != nil {
		cfg.Cluster.HeartbeatInterval = sc.HA.Heartbeat
	}
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.E.trace.Echo = opts.Echo
	s.E.RunFor(BootTime)
	var execErr error
	for _, it := range sc.Items {
		cmd := it.Cmd
		s.E.After(BootTime+it.At-s.E.Elapsed(), "", func() {
			if err := s.Exec(cmd); err != nil && execErr == nil {
				execErr = fmt.Errorf("%s: %w", strings.Join(cmd, " "), err)
			}
		})
	}
	s.E.RunUntil(Epoch.Add(BootTime + sc.End()))
	if execErr != nil {
		return nil, execErr
	}
	s.E.trace.Add("sim", "end of schedule: heal, then the quiet period")
	s.Heal()
	quiet := sc.Quiet
	if quiet == 0 {
		quiet = DefaultQuiet
	}
	s.E.RunFor(quiet)
	s.Check.Final()
	verdict := "ok"
	if s.Check.Failed() {
		verdict = fmt.Sprintf("%d violations", len(s.Check.Violations))
	}
	s.E.trace.Addf("sim", "end: %s", verdict)
	return &Result{Schedule: sc, Violations: s.Check.Violations, Trace: append([]byte(nil), s.E.trace.Bytes()...),
		TraceHash: s.E.trace.Hash(), Log: s.goldenLog(), Steps: s.E.Steps(), SimTime: s.E.Elapsed(), Wall: time.Since(wall),
		Network: s.Net.Outcomes()}, nil
}

// goldenLog is what a scenario's expect file holds.
func (s *Sim) goldenLog() string {
	names := s.names()
	var b strings.Builder
	b.WriteString("## operations\n")
	for _, w := range s.Ops.Writes {
		ack := "acknowledged"
		if !w.Acked {
			ack = "failed"
		}
		fmt.Fprintf(&b, "%s %s: %s\n", strings.TrimSpace(stamp(w.At.Sub(Epoch))), w, ack)
	}
	b.WriteString("## events (leader's event log)\n")
	if l := s.Cluster.leader; l != nil {
		evs, err := l.FSM.Events(0, 100000)
		if err != nil {
			fmt.Fprintf(&b, "read events: %v\n", err)
		}
		for _, e := range evs {
			line := fmt.Sprintf("%s %s", strings.TrimSpace(stamp(e.Time.Sub(Epoch))), e.Kind)
			if e.NodeID != "" {
				line += " node=" + e.NodeID
			}
			if e.VMID != "" {
				line += " vm=" + e.VMID
			}
			line += ": " + e.Message
			b.WriteString(strings.ReplaceAll(names.Replace(line), s.cfg.Dir, "$SIMDIR") + "\n")
		}
	} else {
		b.WriteString("no leader\n")
	}
	b.WriteString(s.haGolden())
	b.WriteString(s.incidentsGolden())
	b.WriteString("## verdict\n")
	for _, v := range s.Check.Violations {
		b.WriteString(names.Replace(v.String()) + "\n")
	}
	if !s.Check.Failed() {
		b.WriteString("ok: no invariant broken\n")
	}
	return b.String()
}

// names replaces node, VM and task ids (full and short) by names, so that
// a golden log reads like an operator's notes.
func (s *Sim) names() *strings.Replacer {
	var pairs []string
	add := func(id, name string) {
		if id != "" {
			pairs = append(pairs, id, name, structs.ShortID(id), name)
		}
	}
	for _, h := range s.Hosts {
		add(h.nodeID, h.Name)
	}
	if l := s.Cluster.leader; l != nil {
		if vms, err := l.FSM.VMs(); err == nil {
			for _, vm := range vms {
				add(vm.ID, vm.Name)
			}
		}
		if tasks, err := l.FSM.Tasks(); err == nil {
			for i := len(tasks) - 1; i >= 0; i-- {
				add(tasks[i].ID, fmt.Sprintf("task%d", len(tasks)-i))
			}
		}
	}
	for _, w := range s.Ops.Writes {
		add(w.VMID, w.VM)
	}
	// Full ids first: a replacer tries its pairs in order at each position.
	var full, short []string
	for i := 0; i < len(pairs); i += 4 {
		full = append(full, pairs[i], pairs[i+1])
		short = append(short, pairs[i+2], pairs[i+3])
	}
	return strings.NewReplacer(append(full, short...)...)
}
