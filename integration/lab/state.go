package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// StateFile is the name of the file WriteState writes into the lab dir.
const StateFile = "lab.json"

// State is the JSON description of a running lab that scripts read
// (.lab/lab.json): names, addresses and URIs of every host.
type State struct {
	Prefix       string      `json:"prefix"`
	Dir          string      `json:"dir"`
	MgmtSubnet   string      `json:"mgmt_subnet"`
	BizSubnet    string      `json:"biz_subnet"`
	MgmtBridge   string      `json:"mgmt_bridge"`
	BizBridge    string      `json:"biz_bridge"`
	MgmtBridgeIP string      `json:"mgmt_bridge_ip"`
	BizBridgeIP  string      `json:"biz_bridge_ip"`
	ServerIPs    []string    `json:"server_ips"`
	SharedDir    string      `json:"shared_dir"`
	DomainType   string      `json:"domain_type"`
	Hosts        []HostState `json:"hosts"`
}

// HostState describes one host in State.
type HostState struct {
	Name       string `json:"name"`
	Netns      string `json:"netns"`
	MgmtIP     string `json:"mgmt_ip"`
	BizIP      string `json:"biz_ip"`
	MgmtIf     string `json:"mgmt_if"`
	BizIf      string `json:"biz_if"`
	MgmtVeth   string `json:"mgmt_veth"`
	BizVeth    string `json:"biz_veth"`
	Dir        string `json:"dir"`
	HostUUID   string `json:"host_uuid"`
	LibvirtURI string `json:"libvirt_uri"`
	TCPURI     string `json:"tcp_uri"`
}

// State describes the lab.
func (l *Lab) State() State {
	s := State{
		Prefix:       l.Cfg.Prefix,
		Dir:          l.Cfg.Dir,
		MgmtSubnet:   l.MgmtSubnet,
		BizSubnet:    l.BizSubnet,
		MgmtBridge:   l.MgmtBridge,
		BizBridge:    l.BizBridge,
		MgmtBridgeIP: l.MgmtBridgeIP,
		BizBridgeIP:  l.BizBridgeIP,
		ServerIPs:    l.ServerIPs,
		SharedDir:    l.SharedDir,
		DomainType:   DomainType(),
	}
	for _, h := range l.Hosts {
		s.Hosts = append(s.Hosts, HostState{
			Name: h.Name, Netns: h.Netns, MgmtIP: h.MgmtIP, BizIP: h.BizIP,
			MgmtIf: h.MgmtIf, BizIf: h.BizIf, MgmtVeth: h.MgmtVeth, BizVeth: h.BizVeth,
			Dir: h.Dir, HostUUID: h.HostUUID, LibvirtURI: h.LibvirtURI(), TCPURI: h.TCPURI(),
		})
	}
	return s
}

// WriteState writes the lab's State to Dir/lab.json.
func (l *Lab) WriteState() error {
	data, err := json.MarshalIndent(l.State(), "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	path := filepath.Join(l.Cfg.Dir, StateFile)
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Load rebuilds a Lab from the lab.json in dir, so another process (labctl
// down, a test attaching to a running lab) can drive it.
func Load(dir string, log func(format string, args ...any)) (*Lab, error) {
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, fmt.Errorf("load lab: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("load lab %s: %w", dir, err)
	}
	if !prefixRE.MatchString(s.Prefix) {
		return nil, fmt.Errorf("load lab %s: bad prefix %q", dir, s.Prefix)
	}
	if log == nil {
		log = func(string, ...any) {}
	}
	l := &Lab{
		Cfg:          Config{Prefix: s.Prefix, Hosts: len(s.Hosts), Dir: s.Dir, Log: log},
		MgmtSubnet:   s.MgmtSubnet,
		BizSubnet:    s.BizSubnet,
		MgmtBridge:   s.MgmtBridge,
		BizBridge:    s.BizBridge,
		MgmtBridgeIP: s.MgmtBridgeIP,
		BizBridgeIP:  s.BizBridgeIP,
		ServerIPs:    s.ServerIPs,
		SharedDir:    s.SharedDir,
	}
	for _, h := range s.Hosts {
		l.Hosts = append(l.Hosts, &Host{
			Name: h.Name, Netns: h.Netns, MgmtIP: h.MgmtIP, BizIP: h.BizIP,
			MgmtIf: h.MgmtIf, BizIf: h.BizIf, MgmtVeth: h.MgmtVeth, BizVeth: h.BizVeth,
			Dir: h.Dir, HostUUID: h.HostUUID, log: log,
		})
	}
	return l, nil
}
