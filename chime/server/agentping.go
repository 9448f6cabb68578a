package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/heartbeat"
	"github.com/chime-ha/chime/chime/structs"
)

// agentPinger is the ping-back's direct half: GET /v1/ping on the agent's
// API. The heartbeat monitor sets the timeout on ctx. The answer counts
// only when it comes from the node pinged and registered
// (heartbeat.CheckAnswer, uniqueness rule 10).
type agentPinger struct {
	client *http.Client
	https  bool // TLS: the agent API is https (client holds the TLS config)
}

var _ heartbeat.Pinger = agentPinger{}

// maxPingAnswer bounds the answer read: a node id, a name and a flag.
const maxPingAnswer = 4 << 10

func (p agentPinger) Ping(ctx context.Context, n structs.Node) error {
	if n.APIAddr == "" {
		return fmt.Errorf("no agent API address")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api.BaseURL(n.APIAddr, p.https)+"/v1/ping", nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var ans api.PingResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxPingAnswer)).Decode(&ans); err != nil {
		return fmt.Errorf("ping answer: %w", err)
	}
	return heartbeat.CheckAnswer(n, ans.NodeID, ans.Registered)
}
