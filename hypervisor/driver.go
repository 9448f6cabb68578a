package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"libvirt.org/go/libvirtxml"
)

// Config configures a Driver. Zero values take the defaults of withDefaults.
type Config struct {
	// URI of libvirtd: qemu:///system, qemu:///system?socket=/path/to/libvirt-sock,
	// qemu+tcp://HOST/system (also qemu+unix and qemu+tls).
	URI string
	// CallTimeout bounds every libvirt call. A call that does not answer in
	// time is taken as a broken connection: the Driver drops it and reconnects.
	CallTimeout time.Duration
	// MigrateTimeout bounds a live migration, which lasts far longer than
	// an ordinary call; on expiry the migration job is aborted.
	MigrateTimeout time.Duration
	// Logger; the Driver logs under the sub-logger "hypervisor".
	Logger hclog.Logger
	// DomainType is "kvm", "qemu" (TCG) or "" to detect: kvm when libvirt
	// offers it for hvm guests, else qemu.
	DomainType string
	// EventBuffer is the capacity of the Events channel; when it is full
	// the oldest event is dropped.
	EventBuffer int
	// SettleTimeout bounds how long, after each (re)connect, the Driver
	// waits for libvirtd to finish re-attaching the domains it found
	// running before it reports the connection (see settle).
	SettleTimeout time.Duration
}

// Defaults.
const (
	DefaultURI            = "qemu:///system"
	DefaultCallTimeout    = 30 * time.Second
	DefaultMigrateTimeout = 10 * time.Minute
	DefaultEventBuffer    = 1024
	DefaultSettleTimeout  = 30 * time.Second

	reconnectMinBackoff = 100 * time.Millisecond
	reconnectMaxBackoff = 5 * time.Second
	settlePoll          = 100 * time.Millisecond
)

func (c Config) withDefaults() Config {
	if c.URI == "" {
		c.URI = DefaultURI
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.MigrateTimeout <= 0 {
		c.MigrateTimeout = DefaultMigrateTimeout
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.EventBuffer <= 0 {
		c.EventBuffer = DefaultEventBuffer
	}
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = DefaultSettleTimeout
	}
	return c
}

// Driver is a connection to one libvirtd that survives libvirtd restarts.
// Its methods are safe for concurrent use. While the connection is down, and
// after a reconnect until libvirtd has settled (see settle), they fail with an
// error wrapping ErrDisconnected.
type Driver struct {
	cfg        Config
	log        hclog.Logger
	dial       func() socket.Dialer // a fresh dialer for the transport of cfg.URI
	remoteURI  libvirt.ConnectURI   // the URI libvirtd opens once the socket is up
	domainType string               // "kvm" or "qemu", fixed at Open

	mu   sync.Mutex  // guards conn
	conn *connection // current connection; nil while reconnecting or closed

	events  chan Event    // lifecycle and connection events for the user
	emitMu  sync.Mutex    // serializes emit so drop-oldest stays consistent
	dropped atomic.Uint64 // events dropped because nobody read them in time

	stop      context.CancelFunc // ends the keep-alive loop and event readers
	wg        sync.WaitGroup     // the keep-alive loop and event readers
	closeOnce sync.Once
}

// connection is one libvirtd session: a go-libvirt client over one socket.
type connection struct {
	lv       *libvirt.Libvirt
	raw      net.Conn           // the socket, closed by abort to unblock stuck calls
	unsubCtx context.CancelFunc // ends the lifecycle event subscription
}

// abort closes the socket under go-libvirt's feet: every pending call then
// fails and Disconnected() fires, which the keep-alive loop turns into a
// reconnect. go-libvirt's own Disconnect would itself send an RPC and hang
// on a libvirtd that does not answer.
func (c *connection) abort() {
	c.unsubCtx()
	if c.raw != nil {
		_ = c.raw.Close()
	}
}

// recordingDialer remembers the net.Conn it dialed, so abort can close it.
type recordingDialer struct {
	inner socket.Dialer
	mu    sync.Mutex
	conn  net.Conn
}

func (r *recordingDialer) Dial() (net.Conn, error) {
	c, err := r.inner.Dial()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.conn = c
	r.mu.Unlock()
	return c, nil
}

func (r *recordingDialer) dialed() net.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn
}

// Open connects to libvirtd, detects the domain type, subscribes to
// lifecycle events and waits (at most SettleTimeout) for libvirtd to finish
// re-attaching its running domains. The returned Driver keeps the connection
// alive until Close.
// Each connection step is bounded by CallTimeout; ctx is checked between them.
// An unreachable libvirtd at Open is an error (the caller retries or reports
// it); later outages are handled by the Driver.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	cfg = cfg.withDefaults()
	u, err := url.Parse(cfg.URI)
	if err != nil {
		return nil, fmt.Errorf("libvirt uri %q: %w", cfg.URI, err)
	}
	dial, err := dialerFor(u, cfg.CallTimeout)
	if err != nil {
		return nil, fmt.Errorf("libvirt uri %q: %w", cfg.URI, err)
	}
	switch cfg.DomainType {
	case "", DomainTypeKVM, DomainTypeQEMU:
	default:
		return nil, fmt.Errorf("domain type %q: want %q, %q or empty", cfg.DomainType, DomainTypeKVM, DomainTypeQEMU)
	}
	runCtx, stop := context.WithCancel(context.Background())
	d := &Driver{
		cfg:       cfg,
		log:       cfg.Logger.Named("hypervisor"),
		dial:      dial,
		remoteURI: libvirt.RemoteURI(u),
		events:    make(chan Event, cfg.EventBuffer),
		stop:      stop,
	}
	conn, err := d.connect(ctx, runCtx)
	if err != nil {
		stop()
		d.wg.Wait()
		return nil, fmt.Errorf("connect to libvirt at %s: %w", cfg.URI, err)
	}
	d.domainType = cfg.DomainType
	if d.domainType == "" {
		d.domainType = d.detectDomainType(ctx, conn)
	}
	if err := d.settle(ctx, conn); err != nil && ctx.Err() != nil {
		conn.abort()
		stop()
		d.wg.Wait()
		return nil, fmt.Errorf("connect to libvirt at %s: %w", cfg.URI, err)
	}
	d.setConn(conn)
	d.log.Info("connected to libvirt", "uri", cfg.URI, "domain_type", d.domainType)
	d.wg.Add(1)
	go d.keepAlive(runCtx, conn)
	return d, nil
}

// dialerFor returns a constructor of dialers for the transport of u
// (unix, tcp or tls), each dialing within timeout.
func dialerFor(u *url.URL, timeout time.Duration) (func() socket.Dialer, error) {
	if !strings.HasPrefix(u.Scheme, "qemu") {
		return nil, fmt.Errorf("scheme %q: only qemu drivers are supported", u.Scheme)
	}
	transport := "unix"
	if _, t, ok := strings.Cut(u.Scheme, "+"); ok {
		transport = t
	} else if u.Host != "" {
		transport = "tls"
	}
	switch transport {
	case "unix":
		opts := []dialers.LocalOption{dialers.WithLocalTimeout(timeout)}
		if s := u.Query().Get("socket"); s != "" {
			opts = append(opts, dialers.WithSocket(s))
		}
		return func() socket.Dialer { return dialers.NewLocal(opts...) }, nil
	case "tcp":
		opts := []dialers.RemoteOption{dialers.WithRemoteTimeout(timeout)}
		if u.Port() != "" {
			opts = append(opts, dialers.UsePort(u.Port()))
		}
		host := u.Hostname()
		return func() socket.Dialer { return dialers.NewRemote(host, opts...) }, nil
	case "tls":
		var opts []dialers.TLSOption
		if u.Port() != "" {
			opts = append(opts, dialers.UseTLSPort(u.Port()))
		}
		if p := u.Query().Get("pkipath"); p != "" {
			opts = append(opts, dialers.UsePKIPath(p))
		}
		host := u.Hostname()
		return func() socket.Dialer { return dialers.NewTLS(host, opts...) }, nil
	default:
		return nil, fmt.Errorf("transport %q: want unix, tcp or tls", transport)
	}
}

// connect opens one libvirtd session and subscribes to lifecycle events;
// the event reader runs under runCtx and the Driver's WaitGroup. Each step is
// bounded by CallTimeout and waited for even when ctx ends, so that a session
// opened late is never leaked.
func (d *Driver) connect(ctx, runCtx context.Context) (*connection, error) {
	rd := &recordingDialer{inner: d.dial()}
	lv := libvirt.NewWithDialer(rd)
	c := &connection{lv: lv, unsubCtx: func() {}}

	err := d.bounded(context.Background(), "connect", d.cfg.CallTimeout, func() error {
		return lv.ConnectToURI(d.remoteURI)
	}, func() {
		// Dial may still be running: close whatever it managed to open.
		if raw := rd.dialed(); raw != nil {
			_ = raw.Close()
		}
	})
	if err != nil {
		return nil, err
	}
	c.raw = rd.dialed()

	subCtx, unsub := context.WithCancel(runCtx)
	c.unsubCtx = unsub
	var lifecycle <-chan libvirt.DomainEventLifecycleMsg
	err = d.callOn(context.Background(), c, "subscribe lifecycle events", d.cfg.CallTimeout, func(lv *libvirt.Libvirt) error {
		var err error
		lifecycle, err = lv.LifecycleEvents(subCtx)
		return err
	})
	if err != nil {
		c.abort()
		return nil, err
	}
	d.wg.Add(1)
	go d.readEvents(lifecycle)
	if err := ctx.Err(); err != nil {
		c.abort()
		return nil, err
	}
	return c, nil
}

// readEvents forwards lifecycle events until go-libvirt closes the stream
// (connection lost or subscription cancelled). It never blocks on the user.
func (d *Driver) readEvents(lifecycle <-chan libvirt.DomainEventLifecycleMsg) {
	defer d.wg.Done()
	for msg := range lifecycle {
		detail, reason := eventNaming(msg.Event, msg.Detail)
		ev := Event{
			Kind:   EventLifecycle,
			UUID:   uuid.UUID(msg.Dom.UUID).String(),
			Detail: detail,
			Reason: reason,
			At:     time.Now(),
		}
		d.log.Debug("lifecycle event", "uuid", ev.UUID, "domain", msg.Dom.Name, "event", detail, "reason", reason)
		d.emit(ev)
	}
}

// keepAlive waits for the connection to drop, then reconnects with capped
// exponential back-off and reports EventDisconnected / EventReconnected.
// The new connection is used, and EventReconnected sent, only once libvirtd
// has settled (see settle): a reconcile on EventReconnected sees the states
// libvirtd's re-attach left, which libvirtd reports no events for.
func (d *Driver) keepAlive(runCtx context.Context, conn *connection) {
	defer d.wg.Done()
	for {
		select {
		case <-runCtx.Done():
			return
		case <-conn.lv.Disconnected():
		}
		conn.abort()
		d.setConn(nil)
		d.log.Warn("lost connection to libvirt; reconnecting", "uri", d.cfg.URI)
		d.emit(Event{Kind: EventDisconnected, At: time.Now()})

		backoff := reconnectMinBackoff
		for attempt := 1; ; attempt++ {
			timer := time.NewTimer(backoff)
			select {
			case <-runCtx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			c, err := d.connect(runCtx, runCtx)
			if err == nil {
				conn = c
				break
			}
			if runCtx.Err() != nil {
				return
			}
			d.log.Debug("reconnect failed", "uri", d.cfg.URI, "attempt", attempt, "error", err)
			backoff = min(backoff*2, reconnectMaxBackoff)
		}
		if err := d.settle(runCtx, conn); err != nil && runCtx.Err() != nil {
			conn.abort()
			return
		}
		d.setConn(conn)
		d.log.Info("reconnected to libvirt", "uri", d.cfg.URI)
		d.emit(Event{Kind: EventReconnected, At: time.Now()})
	}
}

// settle waits until libvirtd has re-attached every running domain, at most
// SettleTimeout. A freshly started libvirtd accepts clients while one thread
// per running domain still reconnects to its qemu monitor, holding the
// domain's job. When that thread finds qemu gone (it died while libvirtd was
// down, or a destroy issued meanwhile killed it before the monitor was back)
// it stops the domain without any lifecycle event, and a destroy waiting for
// the job then finds the domain already stopped. A listing taken before the
// threads finish may thus show running a domain that silently stops. A domain's
// control state is ok once no job holds it, so settle polls the control state
// of the running domains until all are ok. A domain that stays busy (a long
// job) is logged and given up on at the deadline. Errors come only from a lost
// connection or from ctx; they are logged and returned.
func (d *Driver) settle(ctx context.Context, c *connection) error {
	start := time.Now()
	deadline := start.Add(d.cfg.SettleTimeout)
	for polls := 1; ; polls++ {
		busy, err := d.busyDomains(ctx, c)
		if err != nil {
			d.log.Warn("cannot tell whether libvirt has re-attached its domains", "error", err)
			return err
		}
		if len(busy) == 0 {
			if polls > 1 {
				d.log.Info("libvirt re-attached its domains", "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if !time.Now().Before(deadline) {
			d.log.Warn("libvirt domains still busy; reporting the connection anyway", "domains", busy, "settle_timeout", d.cfg.SettleTimeout)
			return nil
		}
		if polls == 1 {
			d.log.Debug("waiting for libvirt to re-attach its domains", "domains", busy)
		}
		timer := time.NewTimer(settlePoll)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("wait for libvirt to re-attach its domains: %w", ctx.Err())
		case <-timer.C:
		}
	}
}

// busyDomains names the running domains whose control state is not ok:
// some job (at first libvirtd's re-attach) holds them. A domain that stops or
// vanishes between the listing and the query is not busy.
func (d *Driver) busyDomains(ctx context.Context, c *connection) ([]string, error) {
	var doms []libvirt.Domain
	err := d.callOn(ctx, c, "list running domains", d.cfg.CallTimeout, func(lv *libvirt.Libvirt) error {
		var err error
		doms, _, err = lv.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
		return err
	})
	if err != nil {
		return nil, err
	}
	var busy []string
	for _, dom := range doms {
		var state uint32
		err := d.callOn(ctx, c, "get domain control info", d.cfg.CallTimeout, func(lv *libvirt.Libvirt) error {
			var err error
			state, _, _, err = lv.DomainGetControlInfo(dom, 0)
			return err
		})
		if err != nil && (errors.Is(err, ErrDisconnected) || ctx.Err() != nil) {
			return nil, err
		}
		if err == nil && libvirt.DomainControlState(state) != libvirt.DomainControlOk {
			busy = append(busy, dom.Name)
		}
	}
	return busy, nil
}

// emit queues ev for the user; when the buffer is full it drops the oldest
// event, so the libvirt event reader never waits on a slow consumer.
func (d *Driver) emit(ev Event) {
	d.emitMu.Lock()
	defer d.emitMu.Unlock()
	for {
		select {
		case d.events <- ev:
			return
		default:
		}
		select {
		case old := <-d.events:
			n := d.dropped.Add(1)
			d.log.Warn("event buffer full: dropped oldest event", "kind", old.Kind, "uuid", old.UUID, "dropped_total", n)
		default:
		}
	}
}

// Events returns the channel of lifecycle and connection events. It is
// closed by Close. After EventReconnected, events may have been missed:
// do a full reconcile. libvirtd has settled by then, so the states listed
// are those its re-attach left.
func (d *Driver) Events() <-chan Event { return d.events }

// DroppedEvents counts events dropped because the Events buffer was full.
func (d *Driver) DroppedEvents() uint64 { return d.dropped.Load() }

// Close disconnects and stops the keep-alive loop. Events is closed.
func (d *Driver) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.stop()
		d.mu.Lock()
		c := d.conn
		d.conn = nil
		d.mu.Unlock()
		if c != nil {
			// A polite goodbye, bounded: a hung libvirtd gets the socket
			// closed. The subscription ends with the connection: cancelling
			// it first would send a deregistration racing the goodbye, and
			// libvirtd may then close the socket before it answers the
			// goodbye (ErrInterrupted). A goodbye interrupted so has done
			// its job all the same.
			err = d.bounded(context.Background(), "disconnect", d.cfg.CallTimeout, c.lv.Disconnect, c.abort)
			if errors.Is(err, libvirt.ErrInterrupted) {
				err = nil
			}
			c.abort()
		}
		d.wg.Wait()
		// keepAlive may have installed a fresh connection while we closed.
		if c := d.current(); c != nil {
			c.abort()
			d.setConn(nil)
		}
		close(d.events)
	})
	if err != nil && !errors.Is(err, ErrDisconnected) {
		return fmt.Errorf("close libvirt connection: %w", err)
	}
	return nil
}

// Connected reports whether the Driver has a live libvirt connection.
func (d *Driver) Connected() bool {
	c := d.current()
	return c != nil && c.lv.IsConnected()
}

// DomainType is "kvm" or "qemu", as configured or detected at Open.
func (d *Driver) DomainType() string { return d.domainType }

func (d *Driver) current() *connection {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn
}

func (d *Driver) setConn(c *connection) {
	d.mu.Lock()
	d.conn = c
	d.mu.Unlock()
}

// detectDomainType asks libvirt's capabilities whether hvm guests of the
// host's architecture can run under kvm. If libvirt cannot tell, /dev/kvm decides.
func (d *Driver) detectDomainType(ctx context.Context, c *connection) string {
	var capsXML string
	err := d.callOn(ctx, c, "get capabilities", d.cfg.CallTimeout, func(lv *libvirt.Libvirt) error {
		var err error
		capsXML, err = lv.ConnectGetCapabilities()
		return err
	})
	var caps libvirtxml.Caps
	if err == nil {
		err = caps.Unmarshal(capsXML)
	}
	if err != nil {
		d.log.Warn("cannot read libvirt capabilities; checking /dev/kvm", "error", err)
		if _, statErr := os.Stat("/dev/kvm"); statErr == nil {
			return DomainTypeKVM
		}
		return DomainTypeQEMU
	}
	for _, g := range caps.Guests {
		if g.OSType != "hvm" || (caps.Host.CPU != nil && g.Arch.Name != caps.Host.CPU.Arch) {
			continue
		}
		for _, dom := range g.Arch.Domains {
			if dom.Type == DomainTypeKVM {
				return DomainTypeKVM
			}
		}
	}
	return DomainTypeQEMU
}

// call runs fn on the current connection, bounded by ctx and CallTimeout.
func (d *Driver) call(ctx context.Context, op string, fn func(lv *libvirt.Libvirt) error) error {
	c := d.current()
	if c == nil {
		return fmt.Errorf("%s: %w", op, ErrDisconnected)
	}
	return d.callOn(ctx, c, op, d.cfg.CallTimeout, fn)
}

// callOn runs fn on c, bounded by ctx and timeout. A call that times out
// aborts the connection (go-libvirt cannot cancel a call; a libvirtd that
// does not answer one will not answer the next either). Errors from a
// connection that went away wrap ErrDisconnected.
func (d *Driver) callOn(ctx context.Context, c *connection, op string, timeout time.Duration, fn func(lv *libvirt.Libvirt) error) error {
	err := d.bounded(ctx, op, timeout, func() error { return fn(c.lv) }, c.abort)
	if err != nil && !errors.Is(err, ErrDisconnected) && !errors.Is(err, ctx.Err()) && !c.lv.IsConnected() {
		return fmt.Errorf("%s: %w: %w", op, ErrDisconnected, err)
	}
	return err
}

// bounded runs fn in a goroutine and waits for it, ctx or timeout. On timeout
// it calls onTimeout, which must make fn return (by closing its socket). When
// ctx ends first, bounded returns at once and a watchdog still enforces the
// timeout, so no goroutine outlives timeout by much.
func (d *Driver) bounded(ctx context.Context, op string, timeout time.Duration, fn func() error, onTimeout func()) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(timeout)
	select {
	case err := <-done:
		timer.Stop()
		return err
	case <-timer.C:
		d.log.Warn("libvirt call timed out; dropping the connection", "op", op, "timeout", timeout)
		onTimeout()
		return fmt.Errorf("%s: no answer within %s: %w", op, timeout, ErrDisconnected)
	case <-ctx.Done():
		go func() {
			defer timer.Stop()
			select {
			case <-done:
			case <-timer.C:
				d.log.Warn("abandoned libvirt call timed out; dropping the connection", "op", op, "timeout", timeout)
				onTimeout()
			}
		}()
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
}
