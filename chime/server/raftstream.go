package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chime-ha/chime/chime/tlsconf"
)

// The Raft transport over mutual TLS (docs/security.md): a connection
// reaches Raft only once its handshake presented a server certificate of
// the cluster. Refused handshakes (plain TCP, no or another CA's
// certificate, an agent's or a CLI's) are counted
// (chime_raft_refused_connections_total) and logged as a warning with the
// peer's address, at most once a minute per peer host.

// tlsHandshakeTimeout bounds an incoming Raft connection's handshake.
const tlsHandshakeTimeout = 10 * time.Second

// maxRaftHandshakes bounds the incoming handshakes under way at once; a
// connection beyond it is closed at once (reason "busy").
const maxRaftHandshakes = 64

// refusedLogEvery is how often refusals from one peer host are logged.
const refusedLogEvery = time.Minute

// maxRefusedHosts bounds the peer hosts the refusal log remembers; beyond
// it the oldest are forgotten (and their next refusal logged again).
const maxRefusedHosts = 1024

// Reasons of chime_raft_refused_connections_total.
const (
	refusedHandshake = "handshake" // the TLS handshake failed: no, or not a server's, certificate of the cluster
	refusedBusy      = "busy"      // too many handshakes under way
)

// newTLSTransport is the Raft transport over mutual TLS: only a peer with a
// server certificate of the cluster gets a Raft RPC in or answers one.
func (s *Server) newTLSTransport(bind string, adv net.Addr) (*raft.NetworkTransport, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	layer := newTLSStreamLayer(ln, adv, s.tls.ServerConfig(tlsconf.RoleServer), s.tls.ClientConfig(tlsconf.RoleServer),
		newRefusedLog(s.log.Named("raft.transport"), s.met.raftRefused))
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: layer, MaxPool: 3, Timeout: 10 * time.Second, Logger: s.log.Named("raft.transport"),
	}), nil
}

// tlsStreamLayer is a raft.StreamLayer over mutual TLS. Its accept loop
// hands each connection to a goroutine of its own for the handshake, so
// that a slow or failing handshake never stalls the others; Accept
// returns only connections whose handshake succeeded.
type tlsStreamLayer struct {
	ln      net.Listener
	adv     net.Addr    // the advertised address (Addr)
	srv     *tls.Config // incoming: a server certificate required
	cli     *tls.Config // outgoing: the peer must be a server
	refused *refusedLog

	ready     chan net.Conn // handshaken connections
	acceptErr chan error    // errors of the listener's Accept
	done      chan struct{}
	closeOnce sync.Once
	sem       chan struct{} // handshakes under way
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(ln net.Listener, adv net.Addr, srv, cli *tls.Config, refused *refusedLog) *tlsStreamLayer {
	l := &tlsStreamLayer{ln: ln, adv: adv, srv: srv, cli: cli, refused: refused,
		ready: make(chan net.Conn), acceptErr: make(chan error), done: make(chan struct{}),
		sem: make(chan struct{}, maxRaftHandshakes)}
	go l.acceptLoop()
	return l
}

// errLayerClosed is Accept's error once the layer is closed.
var errLayerClosed = errors.New("raft stream layer closed")

func (l *tlsStreamLayer) acceptLoop() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case l.acceptErr <- err: // raft backs off and calls Accept again
				continue
			case <-l.done:
				return
			}
		}
		select {
		case l.sem <- struct{}{}:
			go l.handshake(c)
		default:
			l.refused.note(c.RemoteAddr(), refusedBusy, fmt.Errorf("%d handshakes under way", maxRaftHandshakes))
			_ = c.Close()
		}
	}
}

// handshake runs the server side of the handshake with a deadline and
// hands the connection to Accept, or refuses it.
func (l *tlsStreamLayer) handshake(c net.Conn) {
	defer func() { <-l.sem }()
	tc := tls.Server(c, l.srv)
	_ = tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		l.refused.note(c.RemoteAddr(), refusedHandshake, err)
		_ = tc.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	select {
	case l.ready <- tc:
	case <-l.done:
		_ = tc.Close()
	}
}

// Accept returns the next connection whose handshake succeeded.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.acceptErr:
		return nil, err
	case <-l.done:
		return nil, errLayerClosed
	}
}

func (l *tlsStreamLayer) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

func (l *tlsStreamLayer) Addr() net.Addr { return l.adv }

// Dial connects to a Raft peer and completes the handshake within timeout.
func (l *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), l.cli)
}

// refusedLog counts refused Raft connections and logs them as warnings,
// the first from a peer host at once, then at most once every
// refusedLogEvery with the number left out meanwhile.
type refusedLog struct {
	log   hclog.Logger
	count *prometheus.CounterVec
	now   func() time.Time

	mu    sync.Mutex
	hosts map[string]*refusedHost
}

type refusedHost struct {
	loggedAt   time.Time
	suppressed int
}

func newRefusedLog(log hclog.Logger, count *prometheus.CounterVec) *refusedLog {
	return &refusedLog{log: log, count: count, now: time.Now, hosts: map[string]*refusedHost{}}
}

// note records a refused connection from addr.
func (r *refusedLog) note(addr net.Addr, reason string, err error) {
	r.count.WithLabelValues(reason).Inc()
	host := addr.String()
	if h, _, e := net.SplitHostPort(host); e == nil {
		host = h
	}
	now := r.now()
	r.mu.Lock()
	h, ok := r.hosts[host]
	if ok && now.Sub(h.loggedAt) < refusedLogEvery {
		h.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := 0
	if ok {
		suppressed = h.suppressed
	} else {
		if len(r.hosts) >= maxRefusedHosts {
			r.forgetOldest()
		}
		h = &refusedHost{}
		r.hosts[host] = h
	}
	h.loggedAt, h.suppressed = now, 0
	r.mu.Unlock()
	r.log.Warn("refused a Raft connection: it presented no server certificate of the cluster", "peer", addr.String(),
		"reason", reason, "error", err, "suppressed", suppressed)
}

// forgetOldest drops the host logged longest ago; r.mu is held.
func (r *refusedLog) forgetOldest() {
	var oldest string
	var at time.Time
	for k, h := range r.hosts {
		if oldest == "" || h.loggedAt.Before(at) {
			oldest, at = k, h.loggedAt
		}
	}
	delete(r.hosts, oldest)
}
