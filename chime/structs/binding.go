package structs

import "fmt"

// NodeBinding is the host identity a node is bound to (uniqueness rule
// 10): written by every registration the servers accept (a new node, the
// node's own secret, an operator's reset-secret, or the join credential
// with this same identity). A registration without the node's secret that
// presents the join credential gets a new secret only when it presents
// the same binding (Same).
type NodeBinding struct {
	// HostUUID is libvirt's host UUID the agent derived the node id from.
	HostUUID string `json:"host_uuid"`
	// MachineID is the host's /etc/machine-id ("" when the agent could
	// not read it).
	MachineID string `json:"machine_id,omitempty"`
	// Address is the host of the agent's API address (the ping-back's
	// target).
	Address string `json:"address"`
	// TLS says the agent presented an agent certificate of the cluster;
	// CertNames are that certificate's own names (DNS names and IP
	// addresses besides the role name, localhost and 127.0.0.1, sorted):
	// "" for a certificate shared by every agent.
	TLS       bool   `json:"tls,omitempty"`
	CertNames string `json:"cert_names,omitempty"`
	// JoinAccessor is the accessor id of the join token the agent sent, if
	// any (for the operator's information: every agent-join token admits
	// the same hosts, so it is not compared).
	JoinAccessor string `json:"join_accessor,omitempty"`
}

// Differs names the facts of b that presented p does not match: empty
// when p is the same host identity. A binding without a host UUID (an
// agent that could not read it) never matches.
func (b NodeBinding) Differs(p NodeBinding) []string {
	var out []string
	if b.HostUUID == "" || p.HostUUID != b.HostUUID {
		out = append(out, fmt.Sprintf("host_uuid %q, bound %q", p.HostUUID, b.HostUUID))
	}
	if p.MachineID != b.MachineID {
		out = append(out, fmt.Sprintf("machine_id %q, bound %q", p.MachineID, b.MachineID))
	}
	if p.Address != b.Address {
		out = append(out, fmt.Sprintf("address %s, bound %s", p.Address, b.Address))
	}
	if b.TLS && !p.TLS {
		out = append(out, "no agent certificate, bound to one")
	} else if b.TLS && p.CertNames != b.CertNames {
		out = append(out, fmt.Sprintf("certificate names %q, bound %q", p.CertNames, b.CertNames))
	}
	return out
}
