package gossip

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
)

// TestResolveKeys: --gossip-key seeds the keyring file, which then wins over
// the flag across restarts (rotated keys survive), mode 0600.
func TestResolveKeys(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name        string
		file        [][]byte // keyring file before, nil none
		flag        string
		want        [][]byte
		wantIgnored bool
		wantErr     bool
	}{
		{name: "nothing: plaintext", want: nil},
		{name: "flag seeds the file", flag: b64(k1), want: [][]byte{k1}},
		{name: "file wins over a different flag", file: [][]byte{k2, k1}, flag: b64(bytes.Repeat([]byte{3}, 32)), want: [][]byte{k2, k1}, wantIgnored: true},
		{name: "flag in the file", file: [][]byte{k2, k1}, flag: b64(k1), want: [][]byte{k2, k1}},
		{name: "file without flag", file: [][]byte{k1}, want: [][]byte{k1}},
		{name: "bad flag", flag: "AAAA", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.file != nil {
				if err := SaveKeyring(dir, tt.file); err != nil {
					t.Fatal(err)
				}
			}
			keys, ignored, err := ResolveKeys(dir, tt.flag)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if ignored != tt.wantIgnored || len(keys) != len(tt.want) {
				t.Fatalf("keys %d ignored %v, want %d and %v", len(keys), ignored, len(tt.want), tt.wantIgnored)
			}
			for i := range keys {
				if !bytes.Equal(keys[i], tt.want[i]) {
					t.Fatalf("key %d differs", i)
				}
			}
			if len(tt.want) == 0 {
				if KeyringExists(dir) {
					t.Fatal("a keyring file without a key")
				}
				return
			}
			again, err := LoadKeyring(dir)
			if err != nil || len(again) != len(tt.want) || !bytes.Equal(again[0], tt.want[0]) {
				t.Fatalf("file after: %d keys, %v", len(again), err)
			}
			fi, err := os.Stat(filepath.Join(dir, KeyringFile))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("keyring file mode %v, %v; want 0600", fi.Mode(), err)
			}
		})
	}
}

func TestNewKey(t *testing.T) {
	a, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewKey()
	k, err := ParseKey(a)
	if err != nil || len(k) != 32 || a == b {
		t.Fatalf("key %q (%d bytes, %v), second %q", a, len(k), err, b)
	}
}

func TestLoadKeyringRefusesBadFiles(t *testing.T) {
	for name, content := range map[string]string{"not json": "{", "empty list": "[]", "short key": `["AAAA"]`} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, KeyringFile), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadKeyring(dir); err == nil {
				t.Fatal("bad keyring file accepted")
			}
		})
	}
}
