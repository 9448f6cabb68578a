package agent

import (
	"context"
	"io"
	"sync"

	"github.com/chime-ha/chime/chime/agent/clock"
	"github.com/chime-ha/chime/chime/agent/handover"
	"github.com/chime-ha/chime/chime/agent/health"
	"github.com/chime-ha/chime/chime/api"
)

// Servers is the part of the servers' API the agent calls; *api.Client
// implements it over HTTP, the simulator over its simulated network.
// An error that is a server's answer is an *api.Error (errors.Is matches
// the structs error kinds through it); any other error means no server
// answered.
type Servers interface {
	Register(ctx context.Context, r api.RegisterRequest) (*api.RegisterResponse, error)
	// Desired answers at once when q.Index is 0, and otherwise once the
	// node's desired state passes q.Index or q.Wait has passed (a blocking
	// query).
	Desired(ctx context.Context, q api.QueryOptions) (*api.DesiredState, error)
	Heartbeat(ctx context.Context, r api.HeartbeatRequest) (*api.HeartbeatResponse, error)
	ReportMigration(ctx context.Context, r api.MigrationReport) error
	// SetCredentials sets the node id and secret sent with every later
	// request ("" for none: registration).
	SetCredentials(node, secret string)
	// Addrs are the servers' addresses, for the local status.
	Addrs() []string
}

// Option changes how New wires the agent. Without options the agent talks
// HTTP to cfg.Servers and to other agents, reads the wall clock and draws
// its ids and secrets from crypto/rand: that is production. The simulator
// replaces each of these with its own.
type Option func(*options)

type options struct {
	servers      Servers
	announcer    handover.Announcer
	clock        clock.Clock
	random       io.Reader
	inline       bool
	storageProbe func(dir string) error
	businessNet  health.BusinessNet
	interfaces   func(name string) (handover.Interface, error)
	watchdog     Watchdog
	machineID    func() string
}

// WithMachineID replaces the host's /etc/machine-id the agent presents at
// registration with id (the simulator gives each host its own).
func WithMachineID(id string) Option {
	return func(o *options) { o.machineID = func() string { return id } }
}

// WithWatchdog arms w as the agent's watchdog (isolation response stop):
// it is petted while the isolation lease is valid. Production opens the
// device named by --watchdog (cli); the simulator gives its host's.
func WithWatchdog(w Watchdog) Option { return func(o *options) { o.watchdog = w } }

// WithServers makes the agent talk to the servers through s instead of an
// *api.Client for cfg.Servers.
func WithServers(s Servers) Option { return func(o *options) { o.servers = s } }

// WithAnnouncer makes the agent announce node-local adoptions to other
// agents through an instead of POST /v1/adopt on their agent API.
func WithAnnouncer(an handover.Announcer) Option { return func(o *options) { o.announcer = an } }

// WithClock gives the agent its time: every timestamp, deadline, timer and
// ticker of the agent and its packages reads c.
func WithClock(c clock.Clock) Option { return func(o *options) { o.clock = c } }

// WithRandom makes r the source of the node id (first start), the node
// secret (first registration) and local drain ids. Reads are serialized.
func WithRandom(r io.Reader) Option { return func(o *options) { o.random = r } }

// WithInlineShutdowns makes reconcile passes run guest shutdowns before
// they return, instead of in the background (reconcile.Config.ShutdownInline):
// a stepped agent then starts no goroutine of its own.
func WithInlineShutdowns() Option { return func(o *options) { o.inline = true } }

// WithStorageProbe replaces the health check's storage probe (write, fsync
// and read back a file in every storage path); fn may be called for
// several paths at once.
func WithStorageProbe(fn func(dir string) error) Option {
	return func(o *options) { o.storageProbe = fn }
}

// WithBusinessNet replaces the network the health check's business probe
// reads the business interface's state from and dials its targets through
// (default: the kernel's).
func WithBusinessNet(n health.BusinessNet) Option {
	return func(o *options) { o.businessNet = n }
}

// WithInterfaces replaces the host's network interfaces where `chime agent
// migrate` checks that the destination is on the named interface's network.
func WithInterfaces(lookup func(name string) (handover.Interface, error)) Option {
	return func(o *options) { o.interfaces = lookup }
}

// lockedReader serializes reads of a source that may not be safe for
// concurrent use (a seeded generator).
type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}
