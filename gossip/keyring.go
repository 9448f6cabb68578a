package gossip

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyringFile is the keyring's file name in a data directory: a JSON list of
// base64 keys, the primary first (Consul's serf keyring model). Once it
// exists it is what a restarted member uses, so rotated keys survive
// restarts; --gossip-key only seeds it.
const KeyringFile = "gossip-keyring.json"

// NewKey returns a random AES-256 gossip key, base64-encoded as
// --gossip-key takes it.
func NewKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", fmt.Errorf("gossip keygen: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// KeyringExists reports whether dataDir holds a keyring file.
func KeyringExists(dataDir string) bool {
	if dataDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(dataDir, KeyringFile))
	return err == nil
}

// LoadKeyring returns the keys of dataDir's keyring file, primary first; no
// file is (nil, nil).
func LoadKeyring(dataDir string) ([][]byte, error) {
	path := filepath.Join(dataDir, KeyringFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	var enc []string
	if err := json.Unmarshal(b, &enc); err != nil {
		return nil, fmt.Errorf("gossip keyring %s: %w", path, err)
	}
	if len(enc) == 0 {
		return nil, fmt.Errorf("gossip keyring %s: no keys", path)
	}
	keys := make([][]byte, 0, len(enc))
	for i, e := range enc {
		k, err := ParseKey(e)
		if err != nil || k == nil {
			return nil, fmt.Errorf("gossip keyring %s: key %d: %w", path, i, errors.Join(err, errors.New("bad key")))
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// SaveKeyring writes keys (primary first) to dataDir's keyring file, mode
// 0600, atomically.
func SaveKeyring(dataDir string, keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("gossip keyring: no keys to save")
	}
	enc := make([]string, len(keys))
	for i, k := range keys {
		if err := checkKeyLen(k); err != nil {
			return fmt.Errorf("gossip keyring: key %d: %w", i, err)
		}
		enc[i] = base64.StdEncoding.EncodeToString(k)
	}
	b, err := json.Marshal(enc)
	if err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	path := filepath.Join(dataDir, KeyringFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	return nil
}

// ResolveKeys is the keys a member starts with: the keyring file of dataDir
// when there is one (flagKey, if given and not in it, is only reported by
// ignored=true), else flagKey alone, which then seeds the file. No file and
// no flagKey is (nil, false, nil): gossip in plaintext.
func ResolveKeys(dataDir, flagKey string) (keys [][]byte, ignored bool, err error) {
	fk, err := ParseKey(flagKey)
	if err != nil {
		return nil, false, err
	}
	if dataDir != "" {
		keys, err := LoadKeyring(dataDir)
		if err != nil {
			return nil, false, err
		}
		if keys != nil {
			ignored = fk != nil && !containsKey(keys, fk)
			return keys, ignored, nil
		}
	}
	if fk == nil {
		return nil, false, nil
	}
	if dataDir != "" {
		if err := SaveKeyring(dataDir, [][]byte{fk}); err != nil {
			return nil, false, err
		}
	}
	return [][]byte{fk}, false, nil
}

func containsKey(keys [][]byte, k []byte) bool {
	for _, x := range keys {
		if bytes.Equal(x, k) {
			return true
		}
	}
	return false
}
