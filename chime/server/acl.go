package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/chime/tlsconf"
)

// ACLs (docs/security.md): every route declares what it needs of its
// caller (need); wrap enforces it, on the server that answers (after a
// follower forwarded a leader-only request, on the leader: the token
// travels along in its header and is resolved against the leader's state).

// ACLMode is whether a server enforces ACL tokens.
type ACLMode int

const (
	// ACLDefault enforces ACLs outside --dev and not in --dev.
	ACLDefault ACLMode = iota
	// ACLOn enforces ACLs (--acl).
	ACLOn
	// ACLOff never checks tokens (--acl=false): anyone who reaches the API
	// may do anything.
	ACLOff
)

// aclEnabled says whether this server enforces ACL tokens.
func (s *Server) aclEnabled() bool {
	switch s.cfg.ACL {
	case ACLOn:
		return true
	case ACLOff:
		return false
	}
	return !s.cfg.Dev
}

// need is what a route requires of its caller. The zero value is no
// declaration: route() panics on it, so a route without a role cannot be
// set up.
type need int

const (
	needUnset      need = iota
	needNone            // anyone: health, leader, status, ACL bootstrap
	needRead            // a token of role read, operator or management
	needOperator        // operator or management
	needManagement      // management
	// needAgent: an agent's node id and secret, which the handler
	// authenticates (authenticate); no token.
	needAgent
	// needJoin: registration. A new node needs the join credential (an
	// agent-join or management token, or an agent certificate); a known
	// node its secret, or the join credential and the host identity it is
	// bound to. The endpoint decides, told what the caller presented
	// (callerFrom).
	needJoin
)

func (n need) String() string {
	switch n {
	case needNone:
		return "none"
	case needRead:
		return structs.RoleRead
	case needOperator:
		return structs.RoleOperator
	case needManagement:
		return structs.RoleManagement
	case needAgent:
		return "agent"
	case needJoin:
		return "join"
	}
	return fmt.Sprintf("need(%d)", int(n))
}

// tokenLevel orders the token roles for needRead..needManagement;
// agent-join is 0: it satisfies none of them.
func tokenLevel(role string) need {
	switch role {
	case structs.RoleRead:
		return needRead
	case structs.RoleOperator:
		return needOperator
	case structs.RoleManagement:
		return needManagement
	}
	return 0
}

// TokenFrom returns the ACL token secret a request carries: the
// X-Chime-Token header, or Authorization: Bearer (Prometheus and curl).
func tokenFrom(r *http.Request) string {
	if t := r.Header.Get(api.HeaderToken); t != "" {
		return t
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return ""
}

type callerKey struct{}

// callerFrom is what wrap found on a registration (endpoint.Caller:
// whether it carries the join credential, and its certificate); with ACLs
// off always joined.
func callerFrom(ctx context.Context) endpoint.Caller {
	v, _ := ctx.Value(callerKey{}).(endpoint.Caller)
	return v
}

// joinCaller is the registration's caller as the request shows it.
func (s *Server) joinCaller(r *http.Request) (endpoint.Caller, error) {
	var c endpoint.Caller
	if role, ok := tlsconf.PeerRoleFrom(r.Context()); ok && role == tlsconf.RoleAgent {
		c.Joined, c.TLS, c.CertNames = true, true, tlsconf.PeerNamesFrom(r.Context())
	}
	if !s.aclEnabled() {
		c.Joined = true
		return c, nil
	}
	if secret := tokenFrom(r); secret != "" {
		// An unknown token (a deleted join token an agent still sends)
		// joins nothing; a known node re-registers with its secret all
		// the same.
		tok, err := s.resolveToken(r, secret)
		if err != nil && !structs.IsNotFound(err) {
			return c, err
		}
		if tok != nil && (tok.Role == structs.RoleAgentJoin || tok.Role == structs.RoleManagement) {
			c.Joined, c.JoinAccessor = true, tok.AccessorID
		}
	}
	return c, nil
}

// authorize checks the caller against what the route needs. It returns
// the request, with what the caller presented in its context for
// needJoin (callerFrom), or the refusal: 401 when a token is missing, 403 when it is
// unknown or its role is too weak.
func (s *Server) authorize(r *http.Request, name string, n need) (*http.Request, error) {
	if n == needJoin {
		c, err := s.joinCaller(r)
		if err != nil {
			return nil, err
		}
		return r.WithContext(context.WithValue(r.Context(), callerKey{}, c)), nil
	}
	if !s.aclEnabled() {
		return r, nil
	}
	switch n {
	case needNone, needAgent:
		return r, nil
	}
	secret := tokenFrom(r)
	if secret == "" {
		if !s.ep.ACLBootstrapped() {
			return nil, api.Unauthorized("token", "ACLs are enabled and not bootstrapped: run `chime acl bootstrap` for the management token, then pass a token with --token or CHIME_TOKEN")
		}
		return nil, api.Unauthorized("token", "ACL token missing: "+name+" needs a token of role "+n.String()+" (--token, CHIME_TOKEN, header "+api.HeaderToken+")")
	}
	tok, err := s.resolveToken(r, secret)
	if err != nil {
		return nil, tokenError(err)
	}
	if tokenLevel(tok.Role) < n {
		return nil, structs.Forbidden("ACL token %s has role %s: %s needs role %s", tok.AccessorID, tok.Role, name, n)
	}
	return r, nil
}

// resolvedKey keys a request's *resolvedToken in its context.
type resolvedKey struct{}

// resolvedToken is a request's token as resolved once: authorize and the
// audit record of the same request read the token's record once, not
// each on its own (a bbolt read and a JSON decode per write).
type resolvedToken struct {
	once   sync.Once
	secret string
	tok    *structs.ACLToken
	err    error
}

// withResolvedToken gives r a place to keep its token once resolved.
func withResolvedToken(r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), resolvedKey{}, &resolvedToken{}))
}

// resolveToken is s.ep.ResolveToken(secret), once per request when r has
// a place for it (withResolvedToken).
func (s *Server) resolveToken(r *http.Request, secret string) (*structs.ACLToken, error) {
	rt, _ := r.Context().Value(resolvedKey{}).(*resolvedToken)
	if rt == nil {
		return s.ep.ResolveToken(secret)
	}
	rt.once.Do(func() { rt.secret = secret; rt.tok, rt.err = s.ep.ResolveToken(secret) })
	if rt.secret != secret {
		return s.ep.ResolveToken(secret)
	}
	return rt.tok, rt.err
}

// tokenError is the refusal for a token that does not resolve: 403, like
// Consul's "ACL not found".
func tokenError(err error) error {
	if structs.IsNotFound(err) {
		return structs.Forbidden("ACL token not found (deleted, or from another cluster)")
	}
	return err
}

// aclRoutesOn refuses the ACL routes on a server that does not enforce ACLs.
func (s *Server) aclRoutesOn() error {
	if !s.aclEnabled() {
		return structs.Invalid("acl", "ACLs are disabled on this server (--acl=false, the default in --dev)")
	}
	return nil
}

func (s *Server) handleACLBootstrap(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := s.aclRoutesOn(); err != nil {
		return nil, err
	}
	return s.ep.ACLBootstrap(r.Context(), r.Header.Get(api.HeaderRequestID))
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := s.aclRoutesOn(); err != nil {
		return nil, err
	}
	var req api.CreateTokenRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	return s.ep.CreateToken(r.Context(), r.Header.Get(api.HeaderRequestID), req)
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := s.aclRoutesOn(); err != nil {
		return nil, err
	}
	return s.ep.Tokens()
}

func (s *Server) handleDeleteToken(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := s.aclRoutesOn(); err != nil {
		return nil, err
	}
	return nil, s.ep.DeleteToken(r.Context(), r.Header.Get(api.HeaderRequestID), r.PathValue("id"))
}
