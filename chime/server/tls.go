package server

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
)

// TLS on the server (docs/security.md): with --tls-* material the API
// listener admits servers, agents and CLIs with a certificate from the
// cluster CA and puts the caller's verified role in the request context;
// the Raft stream layer admits and dials servers only; forwarding and the
// ping-back verify that the peer is a server, or an agent.

// insecureWarnEvery is how often a non-dev server without TLS says so (a
// variable for the test).
var insecureWarnEvery = time.Minute

// setupTLS loads the TLS material, if any; it must carry role server.
func (s *Server) setupTLS() error {
	if !s.cfg.TLS.Enabled() {
		return nil
	}
	m, err := tlsconf.Load(s.cfg.TLS)
	if err != nil {
		return err
	}
	if err := m.Expect(tlsconf.RoleServer); err != nil {
		return err
	}
	m.OnReload(func(file string, err error) {
		if err != nil {
			s.log.Error("TLS certificate changed on disk but not loaded; the old one stays in use", "file", file, "error", err)
			return
		}
		s.log.Info("TLS certificate reloaded", "file", file)
	})
	s.tls = m
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = m.ClientConfig(tlsconf.RoleServer)
	s.fwd.Transport = tr
	s.log.Info("TLS on: API and Raft are mutual TLS", "cluster", m.Cluster())
	return nil
}

// pingClient is the ping-back's HTTP client: over TLS it dials agents and
// wants an agent certificate.
func (s *Server) pingClient() agentPinger {
	if s.tls == nil {
		return agentPinger{client: http.DefaultClient}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = s.tls.ClientConfig(tlsconf.RoleAgent)
	return agentPinger{client: &http.Client{Transport: tr}, https: true}
}

// withPeerRole puts the caller's verified role into each request's context
// (tlsconf.PeerRoleFrom), and its certificate's names (tlsconf.CertNames).
// A request a follower forwards arrives from a server; it carries its
// caller's role and names in api.HeaderForwardedRole and
// api.HeaderForwardedCertNames, which are believed from a server only and
// stripped from anyone else.
func (s *Server) withPeerRole(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fwd := tlsconf.Role(r.Header.Get(api.HeaderForwardedRole))
		fwdNames := r.Header.Get(api.HeaderForwardedCertNames)
		r.Header.Del(api.HeaderForwardedRole)
		r.Header.Del(api.HeaderForwardedCertNames)
		if s.tls == nil || r.TLS == nil {
			next.ServeHTTP(w, r)
			return
		}
		role, err := tlsconf.PeerRole(r.TLS, s.tls.Cluster())
		if err != nil { // the handshake checked it already: not reached
			writeError(w, structs.Forbidden("%v", err))
			return
		}
		names := tlsconf.CertNames(r.TLS.PeerCertificates[0])
		if role == tlsconf.RoleServer && tlsconf.ValidRole(fwd) {
			role, names = fwd, fwdNames
		}
		ctx := tlsconf.WithPeerNames(tlsconf.WithPeerRole(r.Context(), role), names)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// apiListener wraps the API's TCP listener in mutual TLS when configured.
func (s *Server) apiListener(lis net.Listener) net.Listener {
	if s.tls == nil {
		return lis
	}
	return tls.NewListener(lis, s.tls.ServerConfig(tlsconf.RoleServer, tlsconf.RoleAgent, tlsconf.RoleCLI))
}

// mayAddVoter decides whether the leader may add a server gossip announced
// as a Raft voter. Without TLS it may (gossip's key is the only gate).
// With TLS the address must not already be a member's, and it must answer
// a TLS handshake with a server certificate of the cluster: gossip
// membership alone never adds a voter.
func (s *Server) mayAddVoter(addr string, conf raft.Configuration) error {
	if s.tls == nil {
		return nil
	}
	for _, sv := range conf.Servers {
		if string(sv.Address) == addr {
			return fmt.Errorf("its Raft address %s is already server %s's", addr, sv.ID)
		}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, s.tls.ClientConfig(tlsconf.RoleServer))
	if err != nil {
		return fmt.Errorf("its Raft address %s did not present a server certificate of the cluster: %w", addr, err)
	}
	return conn.Close()
}

// warnRefusedVoter logs a refused voter at most once a minute per server.
func (s *Server) warnRefusedVoter(id raft.ServerID, err error) {
	s.refusedMu.Lock()
	defer s.refusedMu.Unlock()
	if s.refusedAt == nil {
		s.refusedAt = map[raft.ServerID]time.Time{}
	}
	if t, ok := s.refusedAt[id]; ok && time.Since(t) < time.Minute {
		return
	}
	s.refusedAt[id] = time.Now()
	s.log.Warn("refusing to add a server gossip announced as a Raft voter", "server", id, "error", err)
}

// insecureLoop warns, at start and then every minute, that a non-dev
// server runs without TLS.
func (s *Server) insecureLoop(done <-chan struct{}) {
	warn := func() {
		s.log.Warn("running without TLS: anyone who can reach the API or Raft port can drive this cluster; pass --tls-ca-file, --tls-cert-file and --tls-key-file (docs/security.md)",
			"insecure_no_tls", s.cfg.InsecureNoTLS)
	}
	tlsconf.RemindInsecure(done, insecureWarnEvery, warn)
}
