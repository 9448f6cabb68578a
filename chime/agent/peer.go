package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/tlsconf"
)

// The agent API on the management network: the servers' ping-back, and
// the adoption announcements other agents send before a node-local
// migration to this node.

// Ping is the answer to the servers' ping-back (GET /v1/ping): this
// agent's node id and whether it is registered.
func (a *Agent) Ping() api.PingResponse {
	reg := a.Registered()
	return api.PingResponse{NodeID: a.nodeID, Name: a.cfg.Name, Registered: &reg}
}

func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, a.Ping())
	})
	mux.HandleFunc("POST /v1/adopt", a.handleAdopt)
	return a.withPeerRole(mux)
}

// apiListener wraps the agent API's TCP listener in mutual TLS when the
// agent has TLS material: only servers (the ping-back) and agents
// (adoption announcements) of the cluster get in.
func (a *Agent) apiListener(ln net.Listener) net.Listener {
	if a.tls == nil {
		return ln
	}
	return tls.NewListener(ln, a.tls.ServerConfig(tlsconf.RoleServer, tlsconf.RoleAgent))
}

// insecureWarnEvery is how often an agent without TLS says so.
var insecureWarnEvery = time.Minute

// insecureLoop warns, at start and then every minute, that the agent runs
// without TLS (--insecure-no-tls).
func (a *Agent) insecureLoop(done <-chan struct{}) {
	warn := func() {
		a.logger.Warn("running without TLS: anyone who can reach the agent API can announce adoptions to it, and the servers are reached in plaintext; pass --tls-ca-file, --tls-cert-file and --tls-key-file (docs/security.md)",
			"insecure_no_tls", a.cfg.InsecureNoTLS)
	}
	tlsconf.RemindInsecure(done, insecureWarnEvery, warn)
}

// withPeerRole puts the caller's verified role into the request context.
func (a *Agent) withPeerRole(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.tls == nil || r.TLS == nil {
			next.ServeHTTP(w, r)
			return
		}
		role, err := tlsconf.PeerRole(r.TLS, a.tls.Cluster())
		if err != nil { // the handshake checked it already
			api.WriteJSON(w, http.StatusForbidden, &api.Error{Message: err.Error()})
			return
		}
		next.ServeHTTP(w, r.WithContext(tlsconf.WithPeerRole(r.Context(), role)))
	})
}

// handleAdopt records an announced adoption (see handover.Manager.Adopt).
func (a *Agent) handleAdopt(w http.ResponseWriter, r *http.Request) {
	if a.tls != nil {
		if role, _ := tlsconf.PeerRoleFrom(r.Context()); role != tlsconf.RoleAgent {
			api.WriteJSON(w, http.StatusForbidden, &api.Error{Message: fmt.Sprintf("adoption announcements come from agents only, not from a %q certificate", role)})
			return
		}
	}
	var ad store.Adoption
	api.LimitBody(w, r, 64<<10, api.BodyReadTimeout)
	if err := api.DecodeBody(r.Body, &ad); err != nil {
		e := api.AsError(err)
		api.WriteJSON(w, e.Status, e)
		return
	}
	if err := a.Adopt(r.Context(), ad); err != nil {
		api.WriteJSON(w, api.StatusOf(err), &api.Error{Message: err.Error()})
		return
	}
	ad.ToNode = a.nodeID // the source logs the destination by this id
	api.WriteJSON(w, http.StatusOK, ad)
}

// peerClient announces adoptions to the agent API of another agent.
type peerClient struct {
	port   int          // the agent API port, the same on every agent
	client *http.Client // with TLS: dials agents only (their certificate's role)
	scheme string       // "http://" or "https://"
}

func newPeerClient(port int, m *tlsconf.Material) peerClient {
	if m == nil {
		return peerClient{port: port, client: http.DefaultClient, scheme: "http://"}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = m.ClientConfig(tlsconf.RoleAgent)
	return peerClient{port: port, client: &http.Client{Transport: tr}, scheme: "https://"}
}

// AnnounceAdoption tells the agent at dest a domain is coming; it returns
// the node id that agent answered with.
func (p peerClient) AnnounceAdoption(ctx context.Context, dest string, ad store.Adoption) (string, error) {
	body, err := json.Marshal(ad)
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addr := net.JoinHostPort(dest, strconv.Itoa(p.port))
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, p.scheme+addr+"/v1/adopt", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Message == "" {
			e.Message = "no error message"
		}
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, e.Message)
	}
	var got store.Adoption
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&got); err != nil {
		return "", fmt.Errorf("adoption answer: %w", err)
	}
	return got.ToNode, nil
}
