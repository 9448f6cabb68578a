package local

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/api"
)

// Client talks to an agent's unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent socket at path.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	// A drain or a migration may take minutes.
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: 10 * time.Minute}}
}

// Status returns GET /status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.do(ctx, http.MethodGet, "/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Drain asks the agent to stop every VM and set the local drain flag; it
// answers once no chime VM runs (or its bounded wait ended).
func (c *Client) Drain(ctx context.Context) (*DrainResult, error) {
	var res DrainResult
	err := c.do(ctx, http.MethodPost, "/drain", DrainRequest{}, &res)
	return &res, err
}

// Migrate asks the agent for a node-local live migration.
func (c *Client) Migrate(ctx context.Context, r MigrateRequest) ([]MigrateResult, error) {
	var res []MigrateResult
	err := c.do(ctx, http.MethodPost, "/migrate", r, &res)
	return res, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = strings.NewReader(string(data))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent socket %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("agent socket %s: %w", c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		return &Error{Status: resp.StatusCode, Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("agent socket %s: decode answer: %w", c.socket, err)
		}
	}
	return nil
}

// Error is a non-2xx answer of the agent socket.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("agent: %s (HTTP %d)", e.Message, e.Status) }
