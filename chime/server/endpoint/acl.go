package endpoint

import (
	"context"
	"strings"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

// ACL tokens (docs/security.md): a token is an accessor id (public) and a
// secret (a random 32-byte value, hex), of which the state keeps only the
// SHA-256. The answer that creates a token is the only one that carries
// its secret.

// ACLBootstrap creates the cluster's first management token. It happens
// once: a second bootstrap is a conflict that says so.
func (e *Endpoints) ACLBootstrap(ctx context.Context, reqID string) (api.TokenSecret, error) {
	if idx := e.state.ACLBootstrapIndex(); idx != 0 {
		return api.TokenSecret{}, structs.Conflict("acl", "ACLs are bootstrapped already (at index %d): a cluster is bootstrapped once; create further tokens with a management token (chime acl token create)", idx)
	}
	tok := structs.ACLToken{AccessorID: e.ids.NewID(), Role: structs.RoleManagement, Description: "bootstrap token", Bootstrap: true}
	return e.storeToken(ctx, e.requestID(reqID), fsm.CmdACLBootstrap, tok)
}

// CreateToken creates a token of a role.
func (e *Endpoints) CreateToken(ctx context.Context, reqID string, req api.CreateTokenRequest) (api.TokenSecret, error) {
	if err := req.Validate(); err != nil {
		return api.TokenSecret{}, err
	}
	tok := structs.ACLToken{AccessorID: e.ids.NewID(), Role: req.Role, Description: req.Description}
	return e.storeToken(ctx, e.requestID(reqID), fsm.CmdACLTokenCreate, tok)
}

func (e *Endpoints) storeToken(ctx context.Context, reqID string, typ fsm.CommandType, tok structs.ACLToken) (api.TokenSecret, error) {
	secret := e.ids.NewSecret()
	res, err := e.propose.Propose(ctx, reqID, typ, fsm.ACLTokenCreate{Token: tok, SecretHash: hashSecret(secret)})
	if err != nil {
		return api.TokenSecret{}, err
	}
	if res.Duplicate || res.ObjectID != tok.AccessorID {
		// A retry of a request that applied: its secret went to the first
		// attempt's answer and is not kept anywhere.
		return api.TokenSecret{}, structs.Conflict("acl", "this request (id %s) created token %s already; its secret was in the first answer only: delete the token and create a new one", reqID, res.ObjectID)
	}
	out, err := e.token(tok.AccessorID)
	if err != nil {
		return api.TokenSecret{}, err
	}
	return api.TokenSecret{ACLToken: *out, SecretID: secret}, nil
}

func (e *Endpoints) token(accessor string) (*structs.ACLToken, error) {
	all, err := e.state.ACLTokens()
	if err != nil {
		return nil, err
	}
	for i := range all {
		if all[i].AccessorID == accessor {
			return &all[i], nil
		}
	}
	return nil, structs.NotFound("accessor_id", "no ACL token %s", accessor)
}

// Tokens lists the ACL tokens, without secrets.
func (e *Endpoints) Tokens() ([]structs.ACLToken, error) {
	out, err := e.state.ACLTokens()
	if out == nil && err == nil {
		out = []structs.ACLToken{}
	}
	return out, err
}

// DeleteToken deletes a token by accessor id or a unique prefix of one.
func (e *Endpoints) DeleteToken(ctx context.Context, reqID, ref string) error {
	if ref == "" {
		return structs.Invalid("accessor_id", "is required")
	}
	all, err := e.state.ACLTokens()
	if err != nil {
		return err
	}
	var match []string
	for _, t := range all {
		if t.AccessorID == ref {
			match = []string{ref}
			break
		}
		if strings.HasPrefix(t.AccessorID, ref) {
			match = append(match, t.AccessorID)
		}
	}
	switch len(match) {
	case 0:
		return structs.NotFound("accessor_id", "no ACL token %s", ref)
	case 1:
	default:
		return structs.NotFound("accessor_id", "%q is ambiguous: it prefixes tokens %s", ref, strings.Join(match, ", "))
	}
	_, err = e.propose.Propose(ctx, e.requestID(reqID), fsm.CmdACLTokenDelete, fsm.ACLTokenDelete{AccessorID: match[0]})
	return err
}

// ResolveToken returns the token a secret stands for; an unknown secret
// is structs.ErrNotFound (field token).
func (e *Endpoints) ResolveToken(secret string) (*structs.ACLToken, error) {
	tok, err := e.state.ACLTokenByHash(hashSecret(secret))
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, structs.NotFound("token", "ACL token not found")
	}
	return tok, nil
}

// ACLBootstrapped reports whether ACLs are bootstrapped.
func (e *Endpoints) ACLBootstrapped() bool { return e.state.ACLBootstrapIndex() != 0 }
