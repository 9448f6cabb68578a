package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/fsm"
)

// The audit log (docs/security.md#audit-log): every write through the API
// that the leader answers becomes an event of kind structs.EventAudit in
// the replicated event log, with who called, what (method, route pattern,
// path) and the outcome (status, error message). Never a body or a secret.
//
// Bounds. A successful heartbeat is not audited (every agent sends one
// every few seconds; its effects have their own events); refused ones
// are. Refusals (401, 403) are recorded at most once per minute per
// source host, with the count of those left out, so that nobody can flood
// Raft with refused requests. Records are proposed in the background, at
// most auditInFlight queued or in flight: when Raft is that far behind,
// records are dropped (and logged) rather than slowing down the writes
// they describe. Records that wait while one entry is written share the
// next (CmdEvents), so that concurrent writes do not each cost a second
// Raft entry for their audit record.

const (
	auditIDPrefix      = "audit-" // the request ids of the audit log's commands
	auditInFlight      = 256      // records queued or being written
	auditBatch         = 64       // records per Raft entry at most
	auditRefusalWindow = time.Minute
	auditMaxSources    = 10000 // refusal sources remembered before old ones are forgotten
)

// auditor proposes audit records; one per server.
type auditor struct {
	slots chan struct{}

	qmu     sync.Mutex
	queue   []structs.Event // records waiting for the writer
	writing bool            // a writer goroutine runs

	mu      sync.Mutex
	refused map[string]*refusalWindow // by source host
}

type refusalWindow struct {
	at         time.Time // when a refusal from the source was last recorded
	suppressed int       // refusals not recorded since
}

func newAuditor() *auditor {
	return &auditor{slots: make(chan struct{}, auditInFlight), refused: map[string]*refusalWindow{}}
}

// idle reports whether no audit record is being written (tests).
func (a *auditor) idle() bool { return len(a.slots) == 0 }

// audited says whether a request to a route is audited at all.
func audited(route, method string) bool {
	if method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions {
		return false
	}
	return route != "/" // an unknown endpoint (404) is no write
}

// auditWriter records the status and the error message of the response.
type auditWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer // the first bytes of an error body
}

func (a *auditWriter) WriteHeader(code int) {
	if a.status == 0 {
		a.status = code
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *auditWriter) Write(p []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	if a.status >= 400 && a.body.Len() < 4096 {
		a.body.Write(p[:min(len(p), 4096-a.body.Len())])
	}
	return a.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection (the body
// read deadline of api.LimitBody) through the recorder.
func (a *auditWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// Flush lets streaming handlers flush through the recorder.
func (a *auditWriter) Flush() {
	if f, ok := a.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// auditStart wraps the response writer of a request the leader answers
// (and gives the request a place for its resolved token, resolveToken);
// done records the request once it is answered. Requests that are not
// audited get w back and a no-op.
func (s *Server) auditStart(w http.ResponseWriter, r *http.Request, route string) (http.ResponseWriter, *http.Request, func()) {
	if s.audit == nil || !audited(route, r.Method) {
		return w, r, func() {}
	}
	r = withResolvedToken(r) // authorize and the record resolve the token once
	aw := &auditWriter{ResponseWriter: w}
	return aw, r, func() {
		status := aw.status
		if status == 0 {
			status = http.StatusOK
		}
		if route == "POST /v1/agent/heartbeat" && status < 400 {
			return
		}
		rec := &structs.Audit{Method: r.Method, Route: route, Path: r.URL.Path, Status: status,
			RequestID: r.Header.Get(api.HeaderRequestID), Source: sourceHost(r)}
		if status >= 400 {
			var e api.Error
			if json.Unmarshal(aw.body.Bytes(), &e) == nil {
				rec.Error = e.Message
			}
		}
		if status == http.StatusUnauthorized || status == http.StatusForbidden {
			n, ok := s.audit.admitRefusal(rec.Source, time.Now())
			if !ok {
				return
			}
			rec.Suppressed = n
		}
		rec.Actor, rec.Role = s.auditActor(r)
		s.audit.propose(s, rec, r.PathValue("id"))
	}
}

// admitRefusal says whether a refusal from source is recorded now, and
// how many were left out before it.
func (a *auditor) admitRefusal(source string, now time.Time) (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.refused[source]
	if w == nil {
		if len(a.refused) >= auditMaxSources {
			for k, v := range a.refused {
				if now.Sub(v.at) >= auditRefusalWindow {
					delete(a.refused, k)
				}
			}
			if len(a.refused) >= auditMaxSources {
				return 0, false // flooded from everywhere: record nothing new
			}
		}
		a.refused[source] = &refusalWindow{at: now}
		return 0, true
	}
	if now.Sub(w.at) < auditRefusalWindow {
		w.suppressed++
		return 0, false
	}
	n := w.suppressed
	w.at, w.suppressed = now, 0
	return n, true
}

// auditActor names the caller: the token's accessor, else the node id an
// agent sent, else the certificate's role.
func (s *Server) auditActor(r *http.Request) (actor, role string) {
	if secret := tokenFrom(r); secret != "" && s.aclEnabled() {
		tok, err := s.resolveToken(r, secret)
		if err != nil || tok == nil {
			return "token:unknown", ""
		}
		return "token:" + tok.AccessorID, tok.Role
	}
	if id := r.Header.Get(api.HeaderNode); id != "" {
		return "node:" + truncate(id, 64), ""
	}
	if tr, ok := tlsconf.PeerRoleFrom(r.Context()); ok {
		return "tls:" + string(tr), ""
	}
	return "anonymous", ""
}

// propose appends the record to the event log in the background.
// Records waiting while one is written go together into the next entry
// (CmdEvents, up to auditBatch): under concurrent writes the audit log
// costs a fraction of a Raft entry per write, not one entry each.
func (a *auditor) propose(s *Server, rec *structs.Audit, target string) {
	select {
	case a.slots <- struct{}{}:
	default:
		s.log.Warn("audit record dropped: too many in flight", "route", rec.Route, "actor", rec.Actor, "status", rec.Status)
		return
	}
	ev := structs.Event{Kind: structs.EventAudit, Audit: rec,
		Message: fmt.Sprintf("%s %s by %s: %d", rec.Method, rec.Path, rec.Actor, rec.Status)}
	if rec.Error != "" {
		ev.Message += " " + truncate(rec.Error, 200)
	}
	_, pattern, _ := strings.Cut(rec.Route, " ")
	switch {
	case strings.HasPrefix(pattern, "/v1/vms/{id}"):
		ev.VMID = truncate(target, 128)
	case strings.HasPrefix(pattern, "/v1/nodes/{id}"):
		ev.NodeID = truncate(target, 128)
	case strings.HasPrefix(rec.Actor, "node:"):
		ev.NodeID = strings.TrimPrefix(rec.Actor, "node:")
	}
	a.qmu.Lock()
	a.queue = append(a.queue, ev)
	start := !a.writing
	a.writing = true
	a.qmu.Unlock()
	if start {
		go a.write(s)
	}
}

// write proposes the queued records, a batch per entry, until none is
// left; one writer runs at a time.
func (a *auditor) write(s *Server) {
	for {
		a.qmu.Lock()
		n := min(len(a.queue), auditBatch)
		if n == 0 {
			a.writing = false
			a.qmu.Unlock()
			return
		}
		batch := slices.Clone(a.queue[:n])
		a.queue = slices.Delete(a.queue, 0, n)
		a.qmu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var err error
		if len(batch) == 1 {
			_, err = s.propose(ctx, auditIDPrefix+api.NewRequestID(), fsm.CmdEvent, fsm.AppendEvent{Event: batch[0]})
		} else {
			_, err = s.propose(ctx, auditIDPrefix+api.NewRequestID(), fsm.CmdEvents, fsm.AppendEvents{Events: batch})
		}
		cancel()
		if err != nil {
			for _, ev := range batch {
				s.log.Warn("audit record not written", "route", ev.Audit.Route, "actor", ev.Audit.Actor, "status", ev.Audit.Status, "error", err)
			}
		}
		for range batch {
			<-a.slots
		}
	}
}

// sourceHost is the caller's host, without its port.
func sourceHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
