package gossip

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// ErrUnknownMember is returned for a member name this pool has never seen.
var ErrUnknownMember = errors.New("unknown gossip member")

// ErrShutdown is returned by calls on a pool that has been shut down.
var ErrShutdown = errors.New("gossip pool shut down")

// defaultUpdateTimeout bounds UpdateMeta's wait for its broadcast when ctx
// has no deadline.
const defaultUpdateTimeout = 5 * time.Second

// Member is one pool member as this member sees it.
type Member struct {
	Name  string
	Addr  string // advertised IP
	Port  int    // advertised gossip port
	State string // StateAlive, StateSuspect, StateDead or StateLeft
	Meta  map[string]string
}

func (m Member) clone() Member {
	m.Meta = maps.Clone(m.Meta)
	return m
}

// Pool is this process's membership in the gossip pool. Its methods are safe
// for concurrent use.
type Pool struct {
	name      string
	localAddr string
	log       hclog.Logger
	ml        *memberlist.Memberlist
	del       *delegate

	mu       sync.Mutex // serializes Leave, Shutdown and UpdateMeta against each other
	shutdown bool
}

// Start creates the local member, binds its UDP and TCP listeners and starts
// probing and gossip. It joins nobody: call Join. ctx bounds only the start;
// the pool runs until Shutdown.
func Start(ctx context.Context, cfg Config) (*Pool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start gossip: %w", err)
	}
	mc, err := cfg.memberlistConfig()
	if err != nil {
		return nil, err
	}
	meta, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}

	base := cfg.Logger
	if base == nil {
		base = hclog.NewNullLogger()
	}
	log := base.Named("gossip")
	mc.Logger = log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	mc.LogOutput = nil

	del := newDelegate(log, meta)
	if mc.Keyring != nil {
		del.keyring = &keyringState{kr: mc.Keyring, dir: cfg.KeyringDir, log: log}
	}
	mc.Delegate = del
	mc.Events = del
	if cfg.tune != nil {
		cfg.tune(mc)
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	del.ml.Store(ml)
	if del.keyring != nil {
		del.keyring.ml = ml
	}

	p := &Pool{
		name: cfg.Name,
		// memberlist wrote the port it picked back into mc during Create.
		localAddr: net.JoinHostPort(cfg.BindAddr, strconv.Itoa(mc.BindPort)),
		log:       log,
		ml:        ml,
		del:       del,
	}
	log.Info("gossip started", "name", cfg.Name, "addr", p.localAddr, "encrypted", cfg.Key != nil)
	return p, nil
}

// Join contacts the given members (host:port each) and merges their view of
// the pool. It returns how many it reached, and an error only if it reached
// none. Addresses are tried one at a time; ctx is checked between them (each
// attempt is bounded by memberlist's TCP timeout).
func (p *Pool) Join(ctx context.Context, addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, errors.New("gossip join: no addresses")
	}
	var errs []error
	joined := 0
	for _, addr := range addrs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		n, err := p.ml.Join([]string{addr})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		joined += n
	}
	if joined == 0 {
		return 0, fmt.Errorf("gossip join %s: %w", strings.Join(addrs, ","), errors.Join(errs...))
	}
	if len(errs) > 0 {
		p.log.Warn("gossip join reached only some members", "joined", joined, "errors", errors.Join(errs...))
	}
	return joined, nil
}

// LocalAddr returns the host:port the pool is bound to.
func (p *Pool) LocalAddr() string { return p.localAddr }

// Name returns the local member's name.
func (p *Pool) Name() string { return p.name }

// Members returns every member this pool has seen, including dead and left
// ones until this process forgets them (never, today), sorted by name.
func (p *Pool) Members() []Member {
	table := p.del.snapshot()
	overlayStates(p.ml, table)
	out := slices.Collect(maps.Values(table))
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns one member by name.
func (p *Pool) Member(name string) (Member, bool) {
	m, ok := p.del.member(name)
	if !ok {
		return Member{}, false
	}
	// memberlist's current state (suspect included); a member it has
	// forgotten keeps the state of its last event.
	if s, ok := p.ml.NodeState(name); ok {
		m.State = stateName(s)
	}
	return m, true
}

// Servers returns the alive members whose role is server, sorted by name.
func (p *Pool) Servers() []Member {
	var out []Member
	for _, m := range p.Members() {
		if m.State == StateAlive && m.Meta[MetaRole] == RoleServer {
			out = append(out, m)
		}
	}
	return out
}

// Ping sends one direct memberlist ping to the named member and returns the
// round-trip time. It waits at most memberlist's probe timeout; ctx is only
// checked before sending. A failed ping says nothing by itself: use
// Reachable for memberlist's verdict after indirect probes.
func (p *Pool) Ping(ctx context.Context, name string) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("gossip ping %s: %w", name, err)
	}
	m, ok := p.del.member(name)
	if !ok {
		return 0, fmt.Errorf("gossip ping %s: %w", name, ErrUnknownMember)
	}
	ip := net.ParseIP(m.Addr)
	if ip == nil {
		return 0, fmt.Errorf("gossip ping %s: bad address %q", name, m.Addr)
	}
	// memberlist's own figure starts its clock after the send and can come
	// out negative on loopback when the ack wins that race; time the whole
	// call instead.
	start := time.Now()
	if _, err := p.ml.Ping(name, &net.UDPAddr{IP: ip, Port: m.Port}); err != nil {
		return 0, fmt.Errorf("gossip ping %s at %s: %w", name, net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)), err)
	}
	return time.Since(start), nil
}

// Reachable reports whether memberlist considers the named member alive,
// that is, its last probes (direct, or indirect through other members)
// were answered. Suspect, dead, left and unknown members are not reachable.
func (p *Pool) Reachable(name string) bool {
	m, ok := p.Member(name)
	return ok && m.State == StateAlive
}

// UpdateMeta replaces the local metadata and gossips it. It waits until the
// update has been sent to at least one other member, until ctx's deadline, or
// at most 5 s without one; the local metadata is replaced either way.
func (p *Pool) UpdateMeta(ctx context.Context, meta map[string]string) error {
	b, err := encodeMeta(meta)
	if err != nil {
		return fmt.Errorf("gossip update meta: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("gossip update meta: %w", err)
	}
	timeout := defaultUpdateTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return fmt.Errorf("gossip update meta: %w", context.DeadlineExceeded)
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutdown {
		return fmt.Errorf("gossip update meta: %w", ErrShutdown)
	}
	p.del.setMeta(b)
	if err := p.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip update meta: %w", err)
	}
	return nil
}

// Subscribe returns a channel of membership events and a function that
// cancels the subscription and closes the channel. Events are sent without
// blocking memberlist: a subscriber more than 128 events behind loses the
// newer ones (counted in DroppedEvents). Shutdown closes every channel.
func (p *Pool) Subscribe() (<-chan MemberEvent, func()) {
	return p.del.subscribe()
}

// DroppedEvents returns how many events were dropped for slow subscribers.
func (p *Pool) DroppedEvents() uint64 { return p.del.dropped.Load() }

// NumMembers returns how many members memberlist considers alive or suspect,
// this one included.
func (p *Pool) NumMembers() int { return p.ml.NumMembers() }

// Leave announces this member's departure and waits up to timeout for the
// announcement to go out. The pool keeps running (call Shutdown); other
// members see this one as left.
func (p *Pool) Leave(timeout time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutdown {
		return fmt.Errorf("gossip leave: %w", ErrShutdown)
	}
	if err := p.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip leave: %w", err)
	}
	p.log.Info("left gossip pool")
	return nil
}

// Shutdown stops the listeners and all gossip without announcing anything:
// other members detect the silence by probing. It closes every subscriber
// channel. Calling it again does nothing.
func (p *Pool) Shutdown() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutdown {
		return nil
	}
	p.shutdown = true
	err := p.ml.Shutdown()
	p.del.closeSubscribers()
	if err != nil {
		return fmt.Errorf("gossip shutdown: %w", err)
	}
	p.log.Info("gossip stopped")
	return nil
}
