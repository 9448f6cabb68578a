package gossip

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantLen int
		wantErr string // substring; "" means no error
	}{
		{"empty means no encryption", "", 0, ""},
		{"16 bytes", base64.StdEncoding.EncodeToString(make([]byte, 16)), 16, ""},
		{"24 bytes", base64.StdEncoding.EncodeToString(make([]byte, 24)), 24, ""},
		{"32 bytes", base64.StdEncoding.EncodeToString(make([]byte, 32)), 32, ""},
		{"bad base64", "not base64!!", 0, "--gossip-key must be standard base64"},
		{"url-safe alphabet", strings.Repeat("_", 24), 0, "--gossip-key must be standard base64"},
		{"15 bytes", base64.StdEncoding.EncodeToString(make([]byte, 15)), 0, "got 15 bytes"},
		{"17 bytes", base64.StdEncoding.EncodeToString(make([]byte, 17)), 0, "16, 24 or 32 bytes"},
		{"64 bytes", base64.StdEncoding.EncodeToString(make([]byte, 64)), 0, "got 64 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := ParseKey(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--gossip-key") {
					t.Fatalf("ParseKey(%q) err = %v, want one naming --gossip-key and containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", tt.in, err)
			}
			if len(key) != tt.wantLen {
				t.Fatalf("ParseKey(%q) = %d bytes, want %d", tt.in, len(key), tt.wantLen)
			}
		})
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	ok := Config{Name: "n", BindAddr: "127.0.0.1", Profile: ProfileFast}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"no name", func(c *Config) { c.Name = "" }, "name is required"},
		{"no bind address", func(c *Config) { c.BindAddr = "" }, "bind address is required"},
		{"bind address not an IP", func(c *Config) { c.BindAddr = "localhost" }, "not an IP"},
		{"advertise address not an IP", func(c *Config) { c.AdvertiseAddr = "example" }, "not an IP"},
		{"port out of range", func(c *Config) { c.BindPort = 70000 }, "out of range"},
		{"unknown profile", func(c *Config) { c.Profile = "wan" }, "unknown profile"},
		{"short key", func(c *Config) { c.Key = make([]byte, 8) }, "16, 24 or 32 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			p, err := Start(context.Background(), cfg)
			if err == nil {
				p.Shutdown()
				t.Fatalf("Start accepted %+v", cfg)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Start err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Start(cancelled, ok); err == nil {
		t.Fatal("Start with a cancelled context succeeded")
	}
}
