package sim

import (
	"errors"

	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

// client is the world's side of chime's HTTP client (api.Client): it holds
// the list of servers, sends a request to the current one over the
// simulated network, and on a connection error or a 503 rotates to the
// next and tries again, up to Retries more times, with the same request id
// (so a retried write applies at most once). The back-off between
// attempts takes no simulated time: a call is synchronous and instant for
// its caller.
type client struct {
	s       *Sim
	from    string // the machine it runs on
	current int
	retries int
}

func newClient(s *Sim, from string) *client {
	return &client{s: s, from: from, retries: 4, current: s.E.rand.IntN(len(s.Cluster.Servers))}
}

// do sends one request; fn runs on the leader with the request id.
func do[T any](c *client, what string, write bool, fn func(ep *endpoint.Endpoints, reqID string) (T, error)) (T, error) {
	reqID := ""
	if write {
		reqID = c.s.E.ID()
	}
	if c.from != opMachine {
		// An agent's own request: never paused (interleave.go).
		c.s.inter.agentCalls++
		defer func() { c.s.inter.agentCalls-- }()
	}
	var out T
	var err error
	for attempt := 0; attempt <= c.retries; attempt++ {
		srv := c.s.Cluster.Servers[c.current%len(c.s.Cluster.Servers)]
		out, err = serverCall(c.s, c.from, srv, what, func(ep *endpoint.Endpoints) (T, error) { return fn(ep, reqID) })
		var ne *NetError
		if err == nil || !(errors.As(err, &ne) || errors.Is(err, structs.ErrNoLeader)) {
			return out, err
		}
		c.current++
	}
	return out, err
}
