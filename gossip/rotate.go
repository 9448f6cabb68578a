package gossip

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Keyring operations, fanned out to every member by Pool.RotateKeyring.
const (
	KeyInstall = "install" // add a key, accepted on receive
	KeyUse     = "use"     // make an installed key the primary (used to send)
	KeyRemove  = "remove"  // drop a key; never the primary
)

// ErrNotEncrypted is returned for keyring operations on a plaintext pool.
var ErrNotEncrypted = errors.New("gossip is not encrypted (no keyring)")

// keyringMsgType prefixes a keyring change sent as a memberlist user message.
const keyringMsgType = 'K'

type keyringMsg struct {
	Op  string `json:"op"`
	Key []byte `json:"key"` // encoding/json: base64
}

// keyringState is a member's memberlist keyring and the file it is saved to.
type keyringState struct {
	mu  sync.Mutex // serializes a change and its save
	kr  *memberlist.Keyring
	dir string // "" keeps no file
	log hclog.Logger
	ml  *memberlist.Memberlist
}

// apply runs op on the local keyring and saves the result.
func (k *keyringState) apply(op string, key []byte) error {
	if err := checkKeyLen(key); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var err error
	switch op {
	case KeyInstall:
		err = k.kr.AddKey(key)
	case KeyUse:
		if !containsKey(k.kr.GetKeys(), key) {
			return fmt.Errorf("key %s is not installed: install it first", Fingerprint(key))
		}
		err = k.kr.UseKey(key)
	case KeyRemove:
		if bytes.Equal(k.kr.GetPrimaryKey(), key) {
			return fmt.Errorf("key %s is the primary key: use another key first", Fingerprint(key))
		}
		err = k.kr.RemoveKey(key)
	default:
		return fmt.Errorf("keyring op %q: want %s, %s or %s", op, KeyInstall, KeyUse, KeyRemove)
	}
	if err != nil {
		return fmt.Errorf("keyring %s: %w", op, err)
	}
	if k.dir != "" {
		keys := k.kr.GetKeys() // primary first
		if err := SaveKeyring(k.dir, keys); err != nil {
			return err
		}
	}
	k.log.Info("gossip keyring changed", "op", op, "key", Fingerprint(key))
	return nil
}

func (k *keyringState) applyMsg(b []byte) error {
	var m keyringMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("decode keyring message: %w", err)
	}
	return k.apply(m.Op, m.Key)
}

// Fingerprint names a key without showing it: the first 8 bytes of its
// SHA-256, hex.
func Fingerprint(key []byte) string {
	s := sha256.Sum256(key)
	return hex.EncodeToString(s[:8])
}

// FingerprintOf is the Fingerprint of a base64 key ("" if it does not decode).
func FingerprintOf(b64 string) string {
	k, err := ParseKey(b64)
	if err != nil || k == nil {
		return ""
	}
	return Fingerprint(k)
}

// KeyringResult is what a fanned-out keyring change reached.
type KeyringResult struct {
	Members int               // alive members asked, this one included
	Errors  map[string]string // member name -> why it could not be told
}

// RotateKeyring applies op (KeyInstall, KeyUse, KeyRemove) with key to this
// member's keyring, then sends it to every other alive member over
// memberlist's reliable (TCP, encrypted) channel; each applies and saves it.
// The local change must succeed; members that cannot be told are listed in
// the result (run it again once they are back: every op is idempotent).
func (p *Pool) RotateKeyring(ctx context.Context, op string, key []byte) (KeyringResult, error) {
	res := KeyringResult{Errors: map[string]string{}}
	if p.del.keyring == nil {
		return res, ErrNotEncrypted
	}
	if err := p.del.keyring.apply(op, key); err != nil {
		return res, err
	}
	msg, err := json.Marshal(keyringMsg{Op: op, Key: key})
	if err != nil {
		return res, fmt.Errorf("encode keyring message: %w", err)
	}
	msg = append([]byte{keyringMsgType}, msg...)
	res.Members = 1
	for _, n := range p.ml.Members() {
		if n.Name == p.name || n.State != memberlist.StateAlive {
			continue
		}
		if err := ctx.Err(); err != nil {
			res.Errors[n.Name] = err.Error()
			continue
		}
		res.Members++
		if err := p.ml.SendReliable(n, msg); err != nil {
			res.Errors[n.Name] = err.Error()
		}
	}
	return res, nil
}

// Keys returns this member's keyring, primary first (nil: not encrypted).
func (p *Pool) Keys() [][]byte {
	if p.del.keyring == nil {
		return nil
	}
	return p.del.keyring.kr.GetKeys()
}
