package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
	"github.com/chime-ha/chime/chime/ui"

	"github.com/chime-ha/chime/chime/api"
)

// Limits of blocking queries, and how long a snapshot upload may take.
const (
	snapshotReadTimeout = 30 * time.Minute

	defaultWait = 30 * time.Second
	maxWait     = 5 * time.Minute
)

// handler answers one API request with a value to encode as JSON.
type handler func(w http.ResponseWriter, r *http.Request) (any, error)

// access says where a route must run.
type access int

const (
	local      access = iota // any server answers from its own state
	leaderOnly               // forwarded to the leader (writes, agent traffic)
)

// routeDef is one entry of the route table: what a route needs of its
// caller and where it runs. The route-table test walks s.routes.
type routeDef struct {
	pattern string
	acc     access
	need    need
}

// addRoute adds one route to the table and the mux; a route that declares
// no role (needUnset) panics: every route says who may call it.
func (s *Server) addRoute(mux *http.ServeMux, pattern string, acc access, n need, h handler) {
	if n == needUnset {
		panic("server: route " + pattern + " declares no role")
	}
	s.routes = append(s.routes, routeDef{pattern: pattern, acc: acc, need: n})
	mux.Handle(pattern, s.wrap(pattern, acc, n, h))
}

func (s *Server) setupHTTP() error {
	mux := http.NewServeMux()
	s.routes = nil
	s.audit = newAuditor()
	route := func(pattern string, acc access, n need, h handler) { s.addRoute(mux, pattern, acc, n, h) }
	// VMs
	route("POST /v1/vms", leaderOnly, needOperator, s.handleCreateVM)
	route("GET /v1/vms", local, needRead, s.handleListVMs)
	route("GET /v1/vms/{id}", local, needRead, s.handleGetVM)
	route("POST /v1/vms/{id}/{action}", leaderOnly, needOperator, s.handleVMAction)
	route("DELETE /v1/vms/{id}", leaderOnly, needOperator, s.handleDeleteVM)
	route("PATCH /v1/vms/{id}", leaderOnly, needOperator, s.handleModifyVM)      // ha, priority
	route("GET /v1/vms/{id}/failover", leaderOnly, needRead, s.handleVMFailover) // computed from the leader's state
	// nodes
	route("GET /v1/nodes", local, needRead, s.handleListNodes)
	route("GET /v1/nodes/{id}", local, needRead, s.handleGetNode)
	route("POST /v1/nodes/{id}/{action}", leaderOnly, needOperator, s.handleNodeAction)
	route("POST /v1/nodes/{id}/fence", leaderOnly, needOperator, s.handleFenceNode)
	route("DELETE /v1/nodes/{id}", leaderOnly, needOperator, s.handleRemoveNode)
	route("GET /v1/nodes/{id}/failover", leaderOnly, needRead, s.handleNodeFailover)
	// automatic HA: failover plan, arm switch, brake, reservation
	route("GET /v1/failover", leaderOnly, needRead, s.handleFailover)
	route("GET /v1/operator/ha", leaderOnly, needRead, s.handleHAStatus)
	route("POST /v1/operator/ha/{action}", leaderOnly, needOperator, s.handleHAAction) // arm, disarm
	// agents
	route("POST /v1/agent/register", leaderOnly, needJoin, s.handleRegister)
	route("POST /v1/agent/heartbeat", leaderOnly, needAgent, s.handleHeartbeat)
	route("GET /v1/agent/desired", leaderOnly, needAgent, s.handleDesired)
	route("POST /v1/agent/migrated", leaderOnly, needAgent, s.handleMigrated)
	// operator
	route("GET /v1/operator/raft/peers", local, needRead, s.handlePeers)
	route("DELETE /v1/operator/raft/peers/{id}", leaderOnly, needManagement, s.handleRemovePeer)
	route("GET /v1/operator/members", local, needRead, s.handleMembers)
	route("GET /v1/operator/gossip/keyring", local, needManagement, s.handleGossipKeyring)
	route("POST /v1/operator/gossip/keyring/{op}", local, needManagement, s.handleGossipKeyringChange) // install, use, remove
	route("GET /v1/operator/snapshot", leaderOnly, needManagement, s.handleSnapshotSave)
	route("PUT /v1/operator/snapshot", leaderOnly, needManagement, s.handleSnapshotRestore)
	// ACLs
	route("POST /v1/acl/bootstrap", leaderOnly, needNone, s.handleACLBootstrap)
	route("POST /v1/acl/tokens", leaderOnly, needManagement, s.handleCreateToken)
	route("GET /v1/acl/tokens", local, needManagement, s.handleListTokens)
	route("DELETE /v1/acl/tokens/{id}", leaderOnly, needManagement, s.handleDeleteToken)
	// status, events, alarms, incidents, tasks
	route("GET /v1/status", local, needNone, s.handleStatus)
	route("GET /v1/status/leader", local, needNone, s.handleLeader)
	route("GET /v1/health", local, needNone, s.handleHealth)
	route("GET /v1/events", local, needRead, s.handleEvents)
	route("GET /v1/alarms", leaderOnly, needRead, s.handleAlarms)
	route("GET /v1/incidents", local, needRead, s.handleIncidents)
	route("GET /v1/incidents/{id}", local, needRead, s.handleGetIncident)
	route("GET /v1/tasks", local, needRead, s.handleTasks)
	route("GET /v1/tasks/{id}", local, needRead, s.handleGetTask)
	metrics := s.met.handler(s)
	route("GET /metrics", local, needRead, func(w http.ResponseWriter, r *http.Request) (any, error) {
		metrics.ServeHTTP(w, r)
		return nil, errWritten
	})
	// The web console's files are public: they hold no data, every read
	// and write the page makes goes through the routes above with the
	// user's token (docs/console.md).
	console := ui.Handler()
	route("GET "+ui.Prefix, local, needNone, func(w http.ResponseWriter, r *http.Request) (any, error) {
		console.ServeHTTP(w, r)
		return nil, errWritten
	})
	route("/", local, needNone, func(w http.ResponseWriter, r *http.Request) (any, error) {
		return nil, structs.NotFound("path", "no such endpoint: %s %s", r.Method, r.URL.Path)
	})

	addr := net.JoinHostPort(s.cfg.Bind, strconv.Itoa(s.cfg.APIPort))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api listener on %s: %w", addr, err)
	}
	s.lis = s.apiListener(lis)
	s.http = &http.Server{Handler: s.withPeerRole(mux), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: s.log.Named("http").StandardLogger(nil)}
	go func() {
		if err := s.http.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("api server stopped", "error", err)
		}
	}()
	return nil
}

// wrap adds forwarding, authorization (what the route needs, checked on
// the server that answers), body limits, JSON encoding, error bodies and
// metrics.
func (s *Server) wrap(name string, acc access, n need, h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() { s.met.requests.WithLabelValues(name).Observe(time.Since(start).Seconds()) }()
		if id := r.Header.Get(api.HeaderRequestID); len(id) > api.MaxRequestIDLen {
			writeError(w, structs.Invalid(api.HeaderRequestID, "at most %d characters, got %d", api.MaxRequestIDLen, len(id)))
			return
		}
		if r.Method != http.MethodGet && r.Header.Get(api.HeaderRequestID) == "" {
			// A write without an id gets one here, before any forwarding:
			// handlers derive the ids of their sub-commands from it
			// (id+"-drain"), and without one every such write would share
			// one id ("-drain") and be taken for a retry of the first.
			r.Header.Set(api.HeaderRequestID, api.NewRequestID())
		}
		_, consistent := r.URL.Query()["consistent"]
		if (acc == leaderOnly || consistent) && !s.IsLeader() {
			s.forward(w, r)
			return
		}
		if consistent {
			if err := s.raft.VerifyLeader().Error(); err != nil {
				writeError(w, fmt.Errorf("%w: %v", structs.ErrNoLeader, err))
				return
			}
		}
		if isWrite(r.Method) {
			w = &indexWriter{ResponseWriter: w, fsm: s.fsm} // read-your-writes: readyourwrites.go
		}
		w, r, audit := s.auditStart(w, r, name) // audit.go
		defer audit()
		r, err := s.authorize(r, name, n)
		if err != nil {
			writeError(w, err)
			return
		}
		if name == "PUT /v1/operator/snapshot" { // snapshots have their own, larger limits
			api.LimitBody(w, r, s.cfg.SnapshotMaxBytes, snapshotReadTimeout)
		} else {
			api.LimitBody(w, r, structs.MaxBodyBytes, s.bodyReadTimeout())
		}
		v, err := h(w, r)
		if errors.Is(err, errWritten) {
			return
		}
		if errors.Is(err, errNotLeader) {
			writeError(w, err) // leadership lost mid-request: 503, the client retries with the same request id
			return
		}
		if err != nil {
			writeError(w, err)
			return
		}
		if v == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if w.Header().Get(api.HeaderIndex) == "" {
			w.Header().Set(api.HeaderIndex, strconv.FormatUint(s.fsm.Index(), 10))
		}
		w.Header().Set("Content-Type", "application/json")
		// The status is sent: a write error (the client is gone) or an
		// encode error can only be logged.
		var werr error
		if l, ok := v.(indentedWriter); ok {
			werr = l.writeIndented(w)
		} else {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			werr = enc.Encode(v)
		}
		if werr != nil {
			s.log.Debug("answer not written whole", "route", name, "error", werr)
		}
	})
}

func (s *Server) bodyReadTimeout() time.Duration {
	if s.cfg.BodyReadTimeout > 0 {
		return s.cfg.BodyReadTimeout
	}
	return api.BodyReadTimeout
}

func writeError(w http.ResponseWriter, err error) {
	e := api.AsError(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(e)
}

// forward sends the whole request to the leader and copies its answer back.
// The request id header travels along, so a retry stays idempotent. A
// write's answer is held until this server has applied the index it
// carries (awaitForwarded), so that the client's next read here sees it.
func (s *Server) forward(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(api.HeaderForwarded) != "" {
		writeError(w, fmt.Errorf("%w: forwarded request reached a follower (leader changed)", structs.ErrNoLeader))
		return
	}
	leader, err := s.leaderAPI()
	if err != nil {
		writeError(w, err)
		return
	}
	var req *http.Request
	if r.Method == http.MethodPut && r.URL.Path == "/v1/operator/snapshot" {
		// A snapshot is streamed through (the leader bounds it with
		// --snapshot-max-bytes), never held in memory here.
		api.LimitBody(w, r, s.cfg.SnapshotMaxBytes, snapshotReadTimeout)
		req, err = http.NewRequestWithContext(r.Context(), r.Method, leader+r.URL.RequestURI(), r.Body)
		if err == nil {
			req.ContentLength = r.ContentLength
		}
	} else {
		var body []byte
		api.LimitBody(w, r, structs.MaxBodyBytes, s.bodyReadTimeout())
		body, err = io.ReadAll(r.Body)
		if err != nil {
			writeError(w, bodyError(err))
			return
		}
		req, err = http.NewRequestWithContext(r.Context(), r.Method, leader+r.URL.RequestURI(), bytes.NewReader(body))
	}
	if err != nil {
		writeError(w, err)
		return
	}
	req.Header = r.Header.Clone()
	req.Header.Set(api.HeaderForwarded, s.cfg.Name)
	if role, ok := tlsconf.PeerRoleFrom(r.Context()); ok {
		req.Header.Set(api.HeaderForwardedRole, string(role)) // the leader believes it from a server only
		if names := tlsconf.PeerNamesFrom(r.Context()); names != "" {
			req.Header.Set(api.HeaderForwardedCertNames, names)
		}
	}
	resp, err := s.fwd.Do(req)
	if err != nil {
		writeError(w, fmt.Errorf("%w: forward to leader %s: %v", structs.ErrNoLeader, leader, err))
		return
	}
	defer resp.Body.Close()
	if isWrite(r.Method) {
		s.awaitForwarded(r, resp) // read-your-writes: the next read here sees the write
	}
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	s.met.forwarded.Inc()
}

// decode reads a JSON body strictly (api.DecodeBody: exact field names,
// no unknown fields, no duplicate keys, no trailing data).
func decode(r *http.Request, v any) error { return api.DecodeBody(r.Body, v) }

func bodyError(err error) error { return api.BodyError(err) }

// queryOptions parses ?index=&wait= of blocking queries.
func queryOptions(r *http.Request) (uint64, time.Duration, error) {
	q := r.URL.Query()
	var idx uint64
	if v := q.Get("index"); v != "" {
		var err error
		if idx, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, 0, structs.Invalid("index", "%q is not a non-negative integer", v)
		}
	}
	wait := defaultWait
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return 0, 0, structs.Invalid("wait", "%q is not a duration like 30s", v)
		}
		wait = min(d, maxWait)
	}
	return idx, wait, nil
}

// block waits, for a blocking query, until fn passes index or wait ends.
func (s *Server) block(r *http.Request, fn func() uint64) (uint64, error) {
	idx, wait, err := queryOptions(r)
	if err != nil {
		return 0, err
	}
	if idx == 0 {
		return fn(), nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	return s.fsm.WaitFor(ctx, idx, fn), nil
}

func setIndex(w http.ResponseWriter, idx uint64) {
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(idx, 10))
}
