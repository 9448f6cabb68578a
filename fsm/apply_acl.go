package fsm

import (
	"github.com/chime-ha/chime/chime/structs"
)

// aclBootstrap applies the one ACL bootstrap of the cluster.
func (a *applier) aclBootstrap(p ACLBootstrap) (string, error) {
	if idx := a.tx.ACLBootstrapIndex(); idx != 0 {
		return "", structs.Conflict("acl", "ACLs are bootstrapped already (at index %d): a cluster is bootstrapped once; create further tokens with a management token (chime acl token create)", idx)
	}
	p.Token.Role, p.Token.Bootstrap = structs.RoleManagement, true
	if _, err := a.aclTokenCreate(ACLTokenCreate(p)); err != nil {
		return "", err
	}
	if err := a.tx.SetACLBootstrapIndex(a.tx.Index()); err != nil {
		return "", err
	}
	return p.Token.AccessorID, a.ev("acl.bootstrap", "", "", "ACLs bootstrapped: management token %s", p.Token.AccessorID)
}

// aclTokenCreate stores a new token.
func (a *applier) aclTokenCreate(p ACLTokenCreate) (string, error) {
	tok := p.Token
	if err := structs.ValidateRole("role", tok.Role); err != nil {
		return "", err
	}
	if tok.AccessorID == "" || p.SecretHash == "" {
		return "", structs.Invalid("accessor_id", "a token needs an accessor id and a secret hash")
	}
	if existing, err := a.tx.ACLToken(tok.AccessorID); err != nil {
		return "", err
	} else if existing != nil {
		return "", structs.Conflict("accessor_id", "token %s exists already", tok.AccessorID)
	}
	if a.tx.ACLAccessorByHash(p.SecretHash) != "" {
		return "", structs.Conflict("secret", "a token with this secret exists already")
	}
	tok.CreateIndex, tok.CreateTime = a.tx.Index(), a.tx.Now()
	if err := a.tx.PutACLToken(&tok, p.SecretHash); err != nil {
		return "", err
	}
	return tok.AccessorID, a.ev("acl.token_created", "", "", "ACL token %s created (role %s)", tok.AccessorID, tok.Role)
}

// aclTokenDelete deletes a token, never the last management token.
func (a *applier) aclTokenDelete(p ACLTokenDelete) (string, error) {
	tok, err := a.tx.ACLToken(p.AccessorID)
	if err != nil {
		return "", err
	}
	if tok == nil {
		return "", structs.NotFound("accessor_id", "no ACL token %s", p.AccessorID)
	}
	if tok.Role == structs.RoleManagement {
		all, err := a.tx.ACLTokens()
		if err != nil {
			return "", err
		}
		n := 0
		for _, t := range all {
			if t.Role == structs.RoleManagement {
				n++
			}
		}
		if n <= 1 {
			return "", structs.Conflict("accessor_id", "token %s is the last management token: create another one before deleting it", tok.AccessorID)
		}
	}
	if err := a.tx.DeleteACLToken(tok.AccessorID); err != nil {
		return "", err
	}
	return tok.AccessorID, a.ev("acl.token_deleted", "", "", "ACL token %s deleted (role %s)", tok.AccessorID, tok.Role)
}
