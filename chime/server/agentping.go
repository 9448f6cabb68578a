package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

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
	u, err := pingURL(n.APIAddr, p.https)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
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

// pingURL is the only URL the ping-back dials: the scheme chime's TLS
// setting says, the node's registered host:port, the fixed path /v1/ping.
// Nothing else of the record (a path, a query, user info, a scheme of its
// own) reaches the request: an api_addr that is not a plain host:port is
// refused (registration refuses it too; this guards records written by
// older versions). A legacy "http://" or "https://" prefix is dropped.
func pingURL(addr string, https bool) (*url.URL, error) {
	hp := addr
	for _, p := range []string{"http://", "https://"} {
		if rest, ok := strings.CutPrefix(hp, p); ok {
			hp = rest
			break
		}
	}
	if err := api.ValidateHostPort("api_addr", hp); err != nil {
		return nil, fmt.Errorf("not pinging the node: %w", err)
	}
	scheme := "http"
	if https {
		scheme = "https"
	}
	return &url.URL{Scheme: scheme, Host: hp, Path: "/v1/ping"}, nil
}
