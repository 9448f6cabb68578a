package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/chime-ha/chime/chime/agent/store"
	"github.com/chime-ha/chime/chime/api"
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
	return mux
}

// handleAdopt records an announced adoption (see handover.Manager.Adopt).
func (a *Agent) handleAdopt(w http.ResponseWriter, r *http.Request) {
	var ad store.Adoption
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ad); err != nil {
		api.WriteJSON(w, http.StatusBadRequest, &api.Error{Message: "body: " + err.Error()})
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
	port int // the agent API port, the same on every agent
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
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, "http://"+addr+"/v1/adopt", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
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
