package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/fsm"
)

// Read-your-writes (docs/api.md#read-your-writes). Every write answer
// carries, in api.HeaderIndex, the leader's applied Raft index when it
// answered: at or past the index of every command the write applied
// (propose returns after the leader's FSM applied it). A follower that
// forwarded the write holds the answer until its own FSM has applied that
// index, so the client's next read on the same server sees the write. The
// wait is bounded (readYourWritesWait, and the client's own context): a
// follower that cannot catch up in time answers anyway, logs a warning and
// counts it (chime_forward_apply_wait_total{result="timeout"}).

// readYourWritesWait bounds how long a follower holds a forwarded write's
// answer for its FSM to catch up.
const readYourWritesWait = 5 * time.Second

// How a forwarded write's wait ended (the result label of
// chime_forward_apply_wait_total).
const (
	waitCaughtUp = "caught_up" // the follower had applied the index already
	waitWaited   = "waited"    // it applied it during the wait
	waitTimeout  = "timeout"   // the bound ran out first (or the FSM halted, or the client left)
)

// isWrite says whether a request is a write (what read-your-writes covers).
func isWrite(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// indexWriter stamps a write's answer, whatever its status (201, 204, a
// refusal), with the leader's applied index at the moment the status is
// written: never lower than an index a handler set itself.
type indexWriter struct {
	http.ResponseWriter
	fsm     *fsm.FSM
	stamped bool
}

func (w *indexWriter) stamp() {
	if w.stamped {
		return
	}
	w.stamped = true
	idx := w.fsm.Index()
	if set, err := strconv.ParseUint(w.Header().Get(api.HeaderIndex), 10, 64); err == nil && set > idx {
		idx = set
	}
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(idx, 10))
}

func (w *indexWriter) WriteHeader(code int) {
	w.stamp()
	w.ResponseWriter.WriteHeader(code)
}

func (w *indexWriter) Write(p []byte) (int, error) {
	w.stamp()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection (the body read
// deadline of api.LimitBody).
func (w *indexWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush lets streaming handlers flush through the stamp.
func (w *indexWriter) Flush() {
	w.stamp()
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// awaitForwarded holds a forwarded write's answer until this server's FSM
// has applied the index the leader's answer carries (readYourWritesWait at
// most), and counts how the wait ended. An answer without an index (an
// older leader, or a failure before the leader's API layer) is not held.
func (s *Server) awaitForwarded(r *http.Request, resp *http.Response) {
	idx, err := strconv.ParseUint(resp.Header.Get(api.HeaderIndex), 10, 64)
	if err != nil || idx == 0 {
		return
	}
	if s.fsm.Index() >= idx {
		s.met.forwardWait.WithLabelValues(waitCaughtUp).Inc()
		return
	}
	start := time.Now()
	applied, ok := s.awaitApplied(r.Context(), idx, readYourWritesWait)
	if ok {
		s.met.forwardWait.WithLabelValues(waitWaited).Inc()
		return
	}
	s.met.forwardWait.WithLabelValues(waitTimeout).Inc()
	s.log.Warn("forwarded write answered before this server applied it: a read here right after may not see it",
		"method", r.Method, "path", r.URL.Path, "write_index", idx, "applied_index", applied,
		"waited", time.Since(start).Round(time.Millisecond), "client_gone", r.Context().Err() != nil)
}

// awaitApplied waits until the FSM has applied index, for at most bound
// (or until ctx ends, or the FSM halts). It returns the applied index and
// whether it reached index.
func (s *Server) awaitApplied(ctx context.Context, index uint64, bound time.Duration) (uint64, bool) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for {
		ch, applied := s.fsm.Changed()
		if applied >= index {
			return applied, true
		}
		select {
		case <-ch:
		case <-s.fsm.Halted():
		case <-ctx.Done():
		}
		if ctx.Err() != nil || s.fsm.Err() != nil {
			applied := s.fsm.Index()
			return applied, applied >= index
		}
	}
}

// raftCommitTimeout is Raft's CommitTimeout: how long the leader's
// replication to a follower idles before it sends an AppendEntries anyway.
// That append is how a follower learns that the last entry is committed
// when no other write follows it (heartbeats carry no commit index), so a
// follower holding a forwarded write's answer for its FSM waits up to
// 2×raftCommitTimeout (Raft staggers it at random). Raft's default, 50 ms,
// held such a write's answer 50–100 ms on an idle cluster (p50 83 ms,
// TestFollowerAppliesPromptly); 10 ms holds it 10–20 ms, for a few empty
// appends a second more per follower (docs/api.md#read-your-writes).
const raftCommitTimeout = 10 * time.Millisecond
