package structs

import "time"

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
