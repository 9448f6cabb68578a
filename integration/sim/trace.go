package sim

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"io"
	"strings"
	"time"
)

// Trace is the run's record: every event that ran and every effect seen
// from outside chime's code (network deliveries, hypervisor faults,
// operator requests and their answers, committed log entries, leader
// changes, checker verdicts), one line each, stamped with the simulated
// time since Epoch. Two runs of one seed must produce the same bytes: the
// trace is the determinism artefact.
type Trace struct {
	w     *Engine
	buf   bytes.Buffer
	lines int
	// Echo, when set, receives every line as it is written (a replay with
	// -sim.v).
	Echo io.Writer
	// dir is the run's state directory, different in every run: written as
	// $SIMDIR, so that paths in messages do not break determinism.
	dir string
}

func newTrace(w *Engine) *Trace { return &Trace{w: w} }

// stamp formats a simulated instant as seconds since Epoch.
func stamp(d time.Duration) string {
	return fmt.Sprintf("%10.3f", d.Seconds())
}

// Add writes one line: time, kind, message.
func (t *Trace) Add(kind, msg string) {
	start := t.buf.Len()
	t.buf.WriteString(stamp(t.w.Elapsed()))
	t.buf.WriteByte(' ')
	t.buf.WriteString(kind)
	t.buf.WriteByte(' ')
	if t.dir != "" && strings.Contains(msg, t.dir) {
		msg = strings.ReplaceAll(msg, t.dir, "$SIMDIR")
	}
	t.buf.WriteString(strings.ReplaceAll(msg, "\n", "\\n"))
	t.buf.WriteByte('\n')
	t.lines++
	if t.Echo != nil {
		_, _ = t.Echo.Write(t.buf.Bytes()[start:])
	}
}

// Addf writes one formatted line.
func (t *Trace) Addf(kind, format string, args ...any) { t.Add(kind, fmt.Sprintf(format, args...)) }

// Bytes is the whole trace.
func (t *Trace) Bytes() []byte { return t.buf.Bytes() }

// Lines is the number of lines written.
func (t *Trace) Lines() int { return t.lines }

// Hash is a 64-bit FNV-1a hash of the trace, printed per seed so that two
// runs can be compared at a glance.
func (t *Trace) Hash() uint64 {
	h := fnv.New64a()
	_, _ = h.Write(t.buf.Bytes())
	return h.Sum64()
}

// Tail returns the last n lines.
func (t *Trace) Tail(n int) string {
	b := t.buf.Bytes()
	i := len(b)
	if i > 0 && b[i-1] == '\n' {
		i--
	}
	for k := 0; i > 0; i-- {
		if b[i-1] == '\n' {
			if k++; k == n {
				break
			}
		}
	}
	return string(b[i:])
}

// logWriter feeds the production code's hclog output into the trace: one
// trace line per log line, under kind "log". hclog is configured without
// timestamps; the trace stamps simulated time.
type logWriter struct{ t *Trace }

func (l logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if line != "" {
			l.t.Add("log", line)
		}
	}
	return len(p), nil
}
