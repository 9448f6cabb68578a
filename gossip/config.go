package gossip

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Keys of the node metadata chime uses; other keys are carried as they are.
const (
	MetaRole = "role" // RoleServer or RoleAgent
	MetaAPI  = "api"  // host:port of the member's HTTP API
	MetaRaft = "raft" // host:port of a server's Raft transport

	RoleServer = "server"
	RoleAgent  = "agent"
)

// Profiles select memberlist timing.
const (
	ProfileLAN   = "lan"   // memberlist's DefaultLANConfig: 1 s probes, 500 ms probe timeout
	ProfileLocal = "local" // fast timing for tests on loopback
	ProfileFast  = "fast"  // same as ProfileLocal
)

// MaxMetaSize is the largest JSON-encoded metadata memberlist carries.
const MaxMetaSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is returned when the encoded metadata does not fit in MaxMetaSize.
var ErrMetaTooLarge = errors.New("gossip meta too large")

// Config configures one pool member.
type Config struct {
	Name          string            // unique member name (servers: server name; agents: node id)
	BindAddr      string            // IP to bind UDP and TCP to, e.g. 127.0.0.1; required
	BindPort      int               // 0 picks a free port (tests); LocalAddr reports it
	AdvertiseAddr string            // "" = BindAddr (memberlist picks one when BindAddr is 0.0.0.0)
	AdvertisePort int               // 0 = the bound port
	Key           []byte            // nil, or 16/24/32 bytes: gossip encrypted with AES (memberlist keyring)
	ExtraKeys     [][]byte          // further keys accepted on receive (a rotation under way); needs Key
	Meta          map[string]string // MetaRole, MetaAPI, MetaRaft, ...; JSON-encoded, at most MaxMetaSize bytes
	Profile       string            // ProfileLAN (default), or ProfileLocal/ProfileFast for tests
	KeyringDir    string            // "" none: where keyring changes are saved (KeyringFile)
	Logger        hclog.Logger      // memberlist's logs go to its "gossip" sub-logger; nil discards

	// tune, when set, adjusts the memberlist config last (tests only).
	tune func(*memberlist.Config)
}

// ParseKey decodes the --gossip-key value: standard base64 of 16, 24 or 32
// bytes (AES-128, AES-192 or AES-256). An empty string means no encryption
// and returns nil.
func ParseKey(b64 string) ([]byte, error) {
	if b64 == "" {
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("--gossip-key must be standard base64 of 16, 24 or 32 bytes: %w", err)
	}
	if err := checkKeyLen(key); err != nil {
		return nil, err
	}
	return key, nil
}

func checkKeyLen(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("--gossip-key must be base64 of 16, 24 or 32 bytes (AES-128/192/256), got %d bytes", len(key))
}

// encodeMeta JSON-encodes meta and checks memberlist's size limit.
func encodeMeta(meta map[string]string) ([]byte, error) {
	if len(meta) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("encode gossip meta: %w", err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

func decodeMeta(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return map[string]string{}, nil
	}
	meta := map[string]string{}
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("decode gossip meta: %w", err)
	}
	return meta, nil
}

// memberlistConfig validates cfg and turns it into a memberlist config
// (without delegates).
func (cfg Config) memberlistConfig() (*memberlist.Config, error) {
	if cfg.Name == "" {
		return nil, errors.New("gossip: member name is required")
	}
	if cfg.BindAddr == "" {
		return nil, errors.New("gossip: bind address is required")
	}
	bindIP := net.ParseIP(cfg.BindAddr)
	if bindIP == nil {
		return nil, fmt.Errorf("gossip: bind address %q is not an IP", cfg.BindAddr)
	}
	if cfg.BindPort < 0 || cfg.BindPort > 65535 || cfg.AdvertisePort < 0 || cfg.AdvertisePort > 65535 {
		return nil, fmt.Errorf("gossip: port out of range (bind %d, advertise %d)", cfg.BindPort, cfg.AdvertisePort)
	}
	if cfg.AdvertiseAddr != "" && net.ParseIP(cfg.AdvertiseAddr) == nil {
		return nil, fmt.Errorf("gossip: advertise address %q is not an IP", cfg.AdvertiseAddr)
	}

	var mc *memberlist.Config
	switch cfg.Profile {
	case "", ProfileLAN:
		mc = memberlist.DefaultLANConfig()
	case ProfileLocal, ProfileFast:
		mc = fastConfig()
	default:
		return nil, fmt.Errorf("gossip: unknown profile %q (want %q, %q or %q)", cfg.Profile, ProfileLAN, ProfileLocal, ProfileFast)
	}

	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	if mc.AdvertiseAddr == "" && !bindIP.IsUnspecified() {
		mc.AdvertiseAddr = cfg.BindAddr
	}
	mc.AdvertisePort = cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort // memberlist fills in the picked port when both are 0
	}

	if cfg.Key != nil {
		if err := checkKeyLen(cfg.Key); err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
		for _, k := range cfg.ExtraKeys {
			if err := checkKeyLen(k); err != nil {
				return nil, fmt.Errorf("gossip: %w", err)
			}
		}
		kr, err := memberlist.NewKeyring(cfg.ExtraKeys, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("gossip: keyring: %w", err)
		}
		mc.Keyring = kr
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	} else if len(cfg.ExtraKeys) > 0 {
		return nil, errors.New("gossip: extra keys without a primary key")
	}
	return mc, nil
}

// fastConfig is memberlist timing for tests on one machine: failures are
// suspected within a few hundred milliseconds and declared dead a few probe
// intervals later.
func fastConfig() *memberlist.Config {
	mc := memberlist.DefaultLocalConfig()
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.SuspicionMult = 3
	mc.SuspicionMaxTimeoutMult = 4
	mc.IndirectChecks = 2
	mc.GossipInterval = 50 * time.Millisecond
	mc.GossipNodes = 3
	mc.PushPullInterval = 2 * time.Second
	mc.TCPTimeout = 2 * time.Second
	mc.GossipToTheDeadTime = 10 * time.Second
	mc.AwarenessMaxMultiplier = 4
	return mc
}
