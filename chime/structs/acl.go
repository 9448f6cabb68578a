package structs

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"
)

// ACL token roles (docs/security.md). read < operator < management; a
// management token may do everything a token can. agent-join only
// registers agents.
const (
	RoleRead       = "read"
	RoleOperator   = "operator"
	RoleManagement = "management"
	RoleAgentJoin  = "agent-join"
)

// ACLRoles lists the token roles in the order they are documented.
var ACLRoles = []string{RoleRead, RoleOperator, RoleManagement, RoleAgentJoin}

// MaxTokenDescription bounds an ACL token's description.
const MaxTokenDescription = 256

// ValidateRole checks an ACL token role.
func ValidateRole(field, role string) error {
	for _, r := range ACLRoles {
		if role == r {
			return nil
		}
	}
	return Invalid(field, "%q is not a role (read, operator, management or agent-join)", role)
}

// ACLToken is an ACL token as the state keeps it and lists it: its
// accessor id (public, shown in lists and audit records), its role, and
// never its secret (the state stores only the secret's SHA-256).
type ACLToken struct {
	AccessorID  string    `json:"accessor_id"`
	Role        string    `json:"role"`
	Description string    `json:"description,omitempty"`
	Bootstrap   bool      `json:"bootstrap,omitempty"` // made by `chime acl bootstrap`
	CreateIndex uint64    `json:"create_index"`
	CreateTime  time.Time `json:"create_time"`
}

// HashSecret is what the servers store of a node's secret: the SHA-256 of
// it, hex.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// AdoptionProof is the source node's statement that it hands generation
// gen of VM vmID over by node-local migration: an HMAC-SHA256, keyed with
// the hash of the source node's secret (HashSecret), which only the source
// agent and the servers know. The source agent puts it in its
// announcement; the destination reports it with its adoption; the servers
// check it against the source's stored hash (per-node authorization: the
// destination's own word never moves a VM).
func AdoptionProof(secretHash, vmID string, gen uint64) string {
	m := hmac.New(sha256.New, []byte(secretHash))
	fmt.Fprintf(m, "chime-adoption\x00%s\x00%d", vmID, gen)
	return hex.EncodeToString(m.Sum(nil))
}

// AdoptionProofValid checks an AdoptionProof in constant time.
func AdoptionProofValid(secretHash, vmID string, gen uint64, proof string) bool {
	if secretHash == "" || proof == "" {
		return false
	}
	return hmac.Equal([]byte(AdoptionProof(secretHash, vmID, gen)), []byte(proof))
}
