package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// Headers used by the API.
const (
	HeaderIndex     = "X-Chime-Index"      // Raft index a read answered at
	HeaderRequestID = "X-Chime-Request-Id" // client-generated id of a write; a retry reuses it
	HeaderNode      = "X-Chime-Node"       // agent's node id
	HeaderSecret    = "X-Chime-Secret"     // agent's node secret
	HeaderToken     = "X-Chime-Token"      // ACL token secret (or Authorization: Bearer)
	HeaderForwarded = "X-Chime-Forwarded"  // set by a follower forwarding to the leader
	// HeaderForwardedRole is the TLS role of a forwarded request's caller,
	// set by the follower; the leader believes it only from a server.
	HeaderForwardedRole = "X-Chime-Forwarded-Role"
	// HeaderForwardedCertNames are the names of a forwarded request's
	// caller's certificate (tlsconf.CertNames), set by the follower;
	// believed from a server only, like HeaderForwardedRole.
	HeaderForwardedCertNames = "X-Chime-Forwarded-Cert-Names"
)

// MaxRequestIDLen bounds X-Chime-Request-Id: the id is a key of the
// replicated request records, and a key the state file cannot store would
// stop every server's state machine.
const MaxRequestIDLen = 128

// Client talks to the HTTP API of one or more servers. A write carries a
// request id and is retried with the same id on another server when the
// first cannot be reached, so it applies at most once.
type Client struct {
	mu      sync.Mutex // guards addrs, current, and Node and Secret once SetCredentials is used
	addrs   []string   // base URLs, e.g. http://127.0.0.1:4650
	current int

	HTTP   *http.Client
	Token  string
	Node   string // agent credentials, sent on every request when set
	Secret string
	// Retries is how many further servers (or the same one) a request
	// tries after a connection error or a 503.
	Retries int
}

// NewClient builds a client for the given addresses ("host:port" or URLs).
func NewClient(addrs ...string) *Client {
	c := &Client{HTTP: &http.Client{Timeout: 90 * time.Second}, Retries: 4}
	for _, a := range addrs {
		c.addrs = append(c.addrs, NormalizeAddr(a))
	}
	return c
}

// NormalizeAddr turns "host:port" into "http://host:port" and trims a trailing slash.
func NormalizeAddr(a string) string {
	a = strings.TrimRight(strings.TrimSpace(a), "/")
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	return a
}

// BaseURL is NormalizeAddr, with https instead of http when tls is set:
// with TLS every chime listener speaks https, whatever scheme an address
// was written with.
func BaseURL(a string, tls bool) string {
	a = NormalizeAddr(a)
	if tls {
		if rest, ok := strings.CutPrefix(a, "http://"); ok {
			a = "https://" + rest
		}
	}
	return a
}

// UseTLS makes the client speak https to every server with cfg (its
// certificate, the CA, and the role it wants the servers to carry).
func (c *Client) UseTLS(cfg *tls.Config) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range c.addrs {
		c.addrs[i] = BaseURL(a, true)
	}
	tr := c.transportLocked()
	tr.TLSClientConfig = cfg
	c.HTTP = &http.Client{Timeout: c.timeoutLocked(), Transport: tr}
}

// DiscardUnsentOnClose makes every connection of the client close
// abortively (SO_LINGER 0, a TCP reset): a request given up on (its
// context ended while the network was cut) is dropped with its
// connection, instead of being delivered by the kernel's retransmissions
// once the network is back, long after it was built. The agent's
// heartbeats need this: a heartbeat that arrives late reports what
// libvirt ran when it was built (a VM migrated away since) as if it ran
// now.
func (c *Client) DiscardUnsentOnClose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	tr := c.transportLocked()
	dial := tr.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			if err := tc.SetLinger(0); err != nil {
				conn.Close()
				return nil, fmt.Errorf("set SO_LINGER 0 on the connection to %s: %w", addr, err)
			}
		}
		return conn, nil
	}
	c.HTTP = &http.Client{Timeout: c.timeoutLocked(), Transport: tr}
}

// transportLocked is a copy of the client's transport to change (of
// http.DefaultTransport when it has none of its own).
func (c *Client) transportLocked() *http.Transport {
	if c.HTTP != nil {
		if tr, ok := c.HTTP.Transport.(*http.Transport); ok {
			return tr.Clone()
		}
	}
	return http.DefaultTransport.(*http.Transport).Clone()
}

func (c *Client) timeoutLocked() time.Duration {
	if c.HTTP != nil {
		return c.HTTP.Timeout
	}
	return 90 * time.Second
}

// Addrs returns the configured server URLs.
func (c *Client) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.addrs...)
}

// SetCredentials sets the agent credentials sent on every request (""
// sends none). Unlike assigning Node and Secret, it is safe while requests
// are in flight.
func (c *Client) SetCredentials(node, secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Node, c.Secret = node, secret
}

func (c *Client) pick() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.addrs) == 0 {
		return "http://127.0.0.1:4650"
	}
	return c.addrs[c.current%len(c.addrs)]
}

func (c *Client) rotate() {
	c.mu.Lock()
	c.current++
	c.mu.Unlock()
}

// NewRequestID returns a random id for a write.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Do sends one request. in is encoded as JSON when non-nil; out is decoded
// from a 2xx body when non-nil. It returns the X-Chime-Index of the answer.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, in, out any) (uint64, error) {
	var body []byte
	if raw, ok := in.([]byte); ok {
		body = raw
	} else if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, fmt.Errorf("encode request: %w", err)
		}
	}
	reqID := ""
	if method != http.MethodGet {
		reqID = NewRequestID()
	}
	var lastErr error
	for attempt := 0; attempt <= c.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Duration(attempt) * 250 * time.Millisecond):
			}
		}
		base := c.pick()
		idx, retry, err := c.once(ctx, base, method, path, query, body, reqID, out)
		if err == nil {
			return idx, nil
		}
		lastErr = err
		if !retry || ctx.Err() != nil {
			return idx, err
		}
		c.rotate()
	}
	return 0, lastErr
}

func (c *Client) once(ctx context.Context, base, method, path string, query url.Values, body []byte, reqID string, out any) (uint64, bool, error) {
	u := base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, false, fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if reqID != "" {
		req.Header.Set(HeaderRequestID, reqID)
	}
	if c.Token != "" {
		req.Header.Set(HeaderToken, c.Token)
	}
	c.mu.Lock()
	node, secret := c.Node, c.Secret
	c.mu.Unlock()
	if node != "" {
		req.Header.Set(HeaderNode, node)
		req.Header.Set(HeaderSecret, secret)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, true, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	idx, _ := strconv.ParseUint(resp.Header.Get(HeaderIndex), 10, 64)
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return idx, true, fmt.Errorf("%s %s: read body: %w", method, u, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: HTTP %d: %s", method, u, resp.StatusCode, strings.TrimSpace(string(data)))
			if strings.Contains(string(data), "HTTP request to an HTTPS server") {
				e.Message += " (the server runs TLS: give the CA, a certificate and its key with --tls-ca-file, --tls-cert-file, --tls-key-file)"
			}
		}
		return idx, resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway, e
	}
	if out != nil {
		if w, ok := out.(io.Writer); ok {
			_, err = w.Write(data)
			return idx, false, err
		}
		if err := json.Unmarshal(data, out); err != nil {
			return idx, false, fmt.Errorf("%s %s: decode answer: %w", method, u, err)
		}
	}
	return idx, false, nil
}

// QueryOptions are the blocking-query parameters of list endpoints.
type QueryOptions struct {
	Index      uint64        // answer only once the state's index passes this
	Wait       time.Duration // at most this long (server caps it)
	Consistent bool          // linearizable read through the leader
}

func (q QueryOptions) values() url.Values {
	v := url.Values{}
	if q.Index > 0 {
		v.Set("index", strconv.FormatUint(q.Index, 10))
	}
	if q.Wait > 0 {
		v.Set("wait", q.Wait.String())
	}
	if q.Consistent {
		v.Set("consistent", "")
	}
	return v
}

func esc(s string) string { return url.PathEscape(s) }

// --- VMs ---

// CreateVM creates a VM.
func (c *Client) CreateVM(ctx context.Context, r CreateVMRequest) (*structs.VM, error) {
	var vm structs.VM
	_, err := c.Do(ctx, http.MethodPost, "/v1/vms", nil, r, &vm)
	return &vm, err
}

// ListVMs lists VMs.
func (c *Client) ListVMs(ctx context.Context, q QueryOptions) ([]structs.VM, uint64, error) {
	return c.ListVMsWhere(ctx, VMFilter{}, q)
}

// VMFilter narrows a VM list; empty fields match every VM.
type VMFilter struct {
	Node    string // uuid, unique uuid prefix or name of the node the VM is placed on
	State   string // shown state (structs.VMStates)
	Desired string // running or stopped
	HA      *bool
}

// ListVMsWhere lists the VMs that match f.
func (c *Client) ListVMsWhere(ctx context.Context, f VMFilter, q QueryOptions) ([]structs.VM, uint64, error) {
	v := q.values()
	for k, x := range map[string]string{"node": f.Node, "state": f.State, "desired": f.Desired} {
		if x != "" {
			v.Set(k, x)
		}
	}
	if f.HA != nil {
		v.Set("ha", strconv.FormatBool(*f.HA))
	}
	var vms []structs.VM
	idx, err := c.Do(ctx, http.MethodGet, "/v1/vms", v, nil, &vms)
	return vms, idx, err
}

// GetVM shows one VM by uuid, unique uuid prefix or name.
func (c *Client) GetVM(ctx context.Context, id string) (*structs.VM, error) {
	var vm structs.VM
	_, err := c.Do(ctx, http.MethodGet, "/v1/vms/"+esc(id), nil, nil, &vm)
	return &vm, err
}

// VMAction runs start, stop, restart on a VM.
func (c *Client) VMAction(ctx context.Context, id, action string) (*structs.VM, error) {
	var vm structs.VM
	_, err := c.Do(ctx, http.MethodPost, "/v1/vms/"+esc(id)+"/"+action, nil, nil, &vm)
	return &vm, err
}

// MigrateVM live-migrates a VM, to a given node or one the scheduler picks.
func (c *Client) MigrateVM(ctx context.Context, id, to string) (*structs.Task, error) {
	var t structs.Task
	_, err := c.Do(ctx, http.MethodPost, "/v1/vms/"+esc(id)+"/migrate", nil, map[string]string{"to": to}, &t)
	return &t, err
}

// DeleteVM deletes a VM.
func (c *Client) DeleteVM(ctx context.Context, id string) error {
	_, err := c.Do(ctx, http.MethodDelete, "/v1/vms/"+esc(id), nil, nil, nil)
	return err
}

// --- nodes ---

// ListNodes lists nodes.
func (c *Client) ListNodes(ctx context.Context, q QueryOptions) ([]structs.Node, uint64, error) {
	var nodes []structs.Node
	idx, err := c.Do(ctx, http.MethodGet, "/v1/nodes", q.values(), nil, &nodes)
	return nodes, idx, err
}

// GetNode shows one node by uuid, unique uuid prefix or name.
func (c *Client) GetNode(ctx context.Context, id string) (*structs.Node, error) {
	var n structs.Node
	_, err := c.Do(ctx, http.MethodGet, "/v1/nodes/"+esc(id), nil, nil, &n)
	return &n, err
}

// NodeAction runs enable, disable or drain on a node.
func (c *Client) NodeAction(ctx context.Context, id, action string, body any) (*structs.Node, error) {
	var n structs.Node
	_, err := c.Do(ctx, http.MethodPost, "/v1/nodes/"+esc(id)+"/"+action, nil, body, &n)
	return &n, err
}

// NodeTask runs drain, evacuate or rebuild on a node and returns its task.
func (c *Client) NodeTask(ctx context.Context, id, action string, body any) (*structs.Task, error) {
	var t structs.Task
	_, err := c.Do(ctx, http.MethodPost, "/v1/nodes/"+esc(id)+"/"+action, nil, body, &t)
	return &t, err
}

// GetTask shows one task.
func (c *Client) GetTask(ctx context.Context, id string) (*structs.Task, error) {
	t, _, err := c.WatchTask(ctx, id, QueryOptions{})
	return t, err
}

// WatchTask shows one task as a blocking query: with q.Index set it
// answers once a task write passes that index (or q.Wait ends), with the
// task index (X-Chime-Index).
func (c *Client) WatchTask(ctx context.Context, id string, q QueryOptions) (*structs.Task, uint64, error) {
	var t structs.Task
	idx, err := c.Do(ctx, http.MethodGet, "/v1/tasks/"+esc(id), q.values(), nil, &t)
	return &t, idx, err
}

// RemoveNode removes a node that runs no VM.
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	_, err := c.Do(ctx, http.MethodDelete, "/v1/nodes/"+esc(id), nil, nil, nil)
	return err
}

// --- agent ---

// Register registers (or re-registers) an agent's node.
func (c *Client) Register(ctx context.Context, r RegisterRequest) (*RegisterResponse, error) {
	var out RegisterResponse
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/register", nil, r, &out)
	return &out, err
}

// Heartbeat sends one heartbeat.
func (c *Client) Heartbeat(ctx context.Context, r HeartbeatRequest) (*HeartbeatResponse, error) {
	var out HeartbeatResponse
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/heartbeat", nil, r, &out)
	return &out, err
}

// Desired fetches the VMs placed on the agent's node (blocking query).
func (c *Client) Desired(ctx context.Context, q QueryOptions) (*DesiredState, error) {
	var out DesiredState
	_, err := c.Do(ctx, http.MethodGet, "/v1/agent/desired", q.values(), nil, &out)
	return &out, err
}

// ReportMigration sends a source agent's migration result.
func (c *Client) ReportMigration(ctx context.Context, r MigrationReport) error {
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/migrated", nil, r, nil)
	return err
}

// --- status, operator, events, alarms, tasks ---

// Status returns the answering server's view.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	_, err := c.Do(ctx, http.MethodGet, "/v1/status", nil, nil, &s)
	return &s, err
}

// Peers lists the Raft configuration.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var p []Peer
	_, err := c.Do(ctx, http.MethodGet, "/v1/operator/raft/peers", nil, nil, &p)
	return p, err
}

// RemovePeer removes a server from the Raft configuration.
func (c *Client) RemovePeer(ctx context.Context, id string) error {
	_, err := c.Do(ctx, http.MethodDelete, "/v1/operator/raft/peers/"+esc(id), nil, nil, nil)
	return err
}

// Members lists memberlist members.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var m []Member
	_, err := c.Do(ctx, http.MethodGet, "/v1/operator/members", nil, nil, &m)
	return m, err
}

// SnapshotSave writes a snapshot of the replicated state to w.
func (c *Client) SnapshotSave(ctx context.Context, w io.Writer) error {
	_, err := c.Do(ctx, http.MethodGet, "/v1/operator/snapshot", nil, nil, w)
	return err
}

// SnapshotRestore replaces the replicated state with a saved snapshot.
func (c *Client) SnapshotRestore(ctx context.Context, data []byte) error {
	_, err := c.Do(ctx, http.MethodPut, "/v1/operator/snapshot", nil, data, nil)
	return err
}

// Events lists events after a sequence number (blocking when q.Index is set).
func (c *Client) Events(ctx context.Context, after uint64, q QueryOptions) ([]structs.Event, uint64, error) {
	v := q.values()
	v.Set("after", strconv.FormatUint(after, 10))
	var ev []structs.Event
	idx, err := c.Do(ctx, http.MethodGet, "/v1/events", v, nil, &ev)
	return ev, idx, err
}

// EventsLimit is Events with at most limit events.
func (c *Client) EventsLimit(ctx context.Context, after uint64, limit int, q QueryOptions) ([]structs.Event, uint64, error) {
	v := q.values()
	v.Set("after", strconv.FormatUint(after, 10))
	v.Set("limit", strconv.Itoa(limit))
	var ev []structs.Event
	idx, err := c.Do(ctx, http.MethodGet, "/v1/events", v, nil, &ev)
	return ev, idx, err
}

// AuditEvents lists the audit log's events after a sequence number
// (blocking when q.Index is set); the index returned is how far the
// server's scan went: pass it as the next after.
func (c *Client) AuditEvents(ctx context.Context, after uint64, limit int, q QueryOptions) ([]structs.Event, uint64, error) {
	v := q.values()
	v.Set("after", strconv.FormatUint(after, 10))
	v.Set("audit", "")
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	var ev []structs.Event
	idx, err := c.Do(ctx, http.MethodGet, "/v1/events", v, nil, &ev)
	return ev, idx, err
}

// Alarms lists firing alarms.
func (c *Client) Alarms(ctx context.Context) ([]structs.Alarm, error) {
	var a []structs.Alarm
	_, err := c.Do(ctx, http.MethodGet, "/v1/alarms", nil, nil, &a)
	return a, err
}

// Tasks lists tasks.
func (c *Client) Tasks(ctx context.Context) ([]structs.Task, error) {
	t, _, err := c.ListTasks(ctx, QueryOptions{})
	return t, err
}

// ListTasks lists tasks, newest first, as a blocking query on the index of
// the last task write: with q.Index set it answers once a task is created
// or changes past it (or q.Wait ends). Writes to VMs or nodes do not wake it.
func (c *Client) ListTasks(ctx context.Context, q QueryOptions) ([]structs.Task, uint64, error) {
	var t []structs.Task
	idx, err := c.Do(ctx, http.MethodGet, "/v1/tasks", q.values(), nil, &t)
	return t, idx, err
}

// IncidentFilter selects incidents: State "open" or "resolved" ("" any),
// Node an id, id prefix or name ("" any).
type IncidentFilter struct {
	State string
	Node  string
}

// Incidents lists incidents, newest first (docs/incidents.md); q makes
// it a blocking query on the incidents' index.
func (c *Client) Incidents(ctx context.Context, f IncidentFilter, q QueryOptions) ([]structs.Incident, uint64, error) {
	v := q.values()
	if f.State != "" {
		v.Set("state", f.State)
	}
	if f.Node != "" {
		v.Set("node", f.Node)
	}
	var out []structs.Incident
	idx, err := c.Do(ctx, http.MethodGet, "/v1/incidents", v, nil, &out)
	return out, idx, err
}

// Incident returns one incident by its number.
func (c *Client) Incident(ctx context.Context, id uint64) (*structs.Incident, error) {
	var inc structs.Incident
	_, err := c.Do(ctx, http.MethodGet, "/v1/incidents/"+strconv.FormatUint(id, 10), nil, nil, &inc)
	return &inc, err
}

// FenceNode runs the servers' fence command for a node now.
func (c *Client) FenceNode(ctx context.Context, id string) (*FenceResponse, error) {
	var out FenceResponse
	_, err := c.Do(ctx, http.MethodPost, "/v1/nodes/"+esc(id)+"/fence", nil, nil, &out)
	return &out, err
}

// ModifyVM changes a VM's automatic-HA settings.
func (c *Client) ModifyVM(ctx context.Context, id string, r ModifyVMRequest) (*structs.VM, error) {
	var vm structs.VM
	_, err := c.Do(ctx, http.MethodPatch, "/v1/vms/"+esc(id), nil, r, &vm)
	return &vm, err
}

// --- ACLs ---

// ACLBootstrap creates the cluster's first management token (once).
func (c *Client) ACLBootstrap(ctx context.Context) (*TokenSecret, error) {
	var t TokenSecret
	_, err := c.Do(ctx, http.MethodPost, "/v1/acl/bootstrap", nil, nil, &t)
	return &t, err
}

// CreateToken creates an ACL token; the answer carries its secret.
func (c *Client) CreateToken(ctx context.Context, r CreateTokenRequest) (*TokenSecret, error) {
	var t TokenSecret
	_, err := c.Do(ctx, http.MethodPost, "/v1/acl/tokens", nil, r, &t)
	return &t, err
}

// ListTokens lists the ACL tokens (without secrets).
func (c *Client) ListTokens(ctx context.Context) ([]structs.ACLToken, error) {
	var t []structs.ACLToken
	_, err := c.Do(ctx, http.MethodGet, "/v1/acl/tokens", nil, nil, &t)
	return t, err
}

// DeleteToken deletes an ACL token by accessor id (or a unique prefix).
func (c *Client) DeleteToken(ctx context.Context, accessor string) error {
	_, err := c.Do(ctx, http.MethodDelete, "/v1/acl/tokens/"+esc(accessor), nil, nil, nil)
	return err
}

// HAStatus reads the automatic-HA switch and the HA reservation.
func (c *Client) HAStatus(ctx context.Context) (*HAStatus, error) {
	var out HAStatus
	_, err := c.Do(ctx, http.MethodGet, "/v1/operator/ha", nil, nil, &out)
	return &out, err
}

// SetHAArmed arms (armed) or disarms automatic HA cluster-wide.
func (c *Client) SetHAArmed(ctx context.Context, armed bool, reason string) (*HAStatus, error) {
	action := "disarm"
	if armed {
		action = "arm"
	}
	var out HAStatus
	_, err := c.Do(ctx, http.MethodPost, "/v1/operator/ha/"+action, nil, HAArmRequest{Reason: reason}, &out)
	return &out, err
}

// Failover reads the failover plan: of every protected VM (kind ""), of
// one VM (kind "vms") or of one node's VMs (kind "nodes").
func (c *Client) Failover(ctx context.Context, kind, id string) (*FailoverPlan, error) {
	path := "/v1/failover"
	if kind != "" {
		path = "/v1/" + kind + "/" + esc(id) + "/failover"
	}
	var out FailoverPlan
	_, err := c.Do(ctx, http.MethodGet, path, nil, nil, &out)
	return &out, err
}

// GossipKeyring lists the answering server's gossip keys (fingerprints).
func (c *Client) GossipKeyring(ctx context.Context) (*GossipKeyring, error) {
	var out GossipKeyring
	_, err := c.Do(ctx, http.MethodGet, "/v1/operator/gossip/keyring", nil, nil, &out)
	return &out, err
}

// GossipKeyringChange runs op (install, use, remove) with key (base64) on
// every gossip member.
func (c *Client) GossipKeyringChange(ctx context.Context, op, key string) (*GossipKeyringChange, error) {
	var out GossipKeyringChange
	_, err := c.Do(ctx, http.MethodPost, "/v1/operator/gossip/keyring/"+op, nil, GossipKeyRequest{Key: key}, &out)
	return &out, err
}
