package server

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// TestConfigHAFlags: the HA flags' bounds, each refusal naming its flag.
func TestConfigHAFlags(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir, base.Dev = "s1", "/tmp/x", true
	if base.HATolerateFailures != 1 || base.HABrakeShare != 0.5 {
		t.Fatalf("defaults %d %v, want 1 and 0.5", base.HATolerateFailures, base.HABrakeShare)
	}
	cases := []struct {
		name     string
		tolerate int
		share    float64
		flag     string // "" = valid
	}{
		{"defaults", 1, 0.5, ""},
		{"admission off", 0, 0.5, ""},
		{"most", 16, 1, ""},
		{"negative", -1, 0.5, "--ha-tolerate-failures"},
		{"too many", 17, 0.5, "--ha-tolerate-failures"},
		{"share 0", 1, 0, "--ha-brake-share"},
		{"share above 1", 1, 1.5, "--ha-brake-share"},
		{"share NaN", 1, math.NaN(), "--ha-brake-share"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.HATolerateFailures, c.HABrakeShare = tc.tolerate, tc.share
			err := c.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if !errors.Is(err, structs.ErrInvalid) || !strings.Contains(err.Error(), tc.flag) {
				t.Fatalf("%v, want an invalid-input error naming %s", err, tc.flag)
			}
		})
	}
}

// TestConfigLeaseMargin: --isolation-lease-margin, default 10 s, between
// 500 ms and 10 m.
func TestConfigLeaseMargin(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir, base.Dev = "s1", "/tmp/x", true
	if base.IsolationLeaseMargin != 10*time.Second {
		t.Fatalf("default margin %s, want 10s", base.IsolationLeaseMargin)
	}
	for _, tc := range []struct {
		margin time.Duration
		ok     bool
	}{{10 * time.Second, true}, {time.Second, true}, {500 * time.Millisecond, true}, {10 * time.Minute, true},
		{499 * time.Millisecond, false}, {0, false}, {-time.Second, false}, {11 * time.Minute, false}} {
		c := base
		c.IsolationLeaseMargin = tc.margin
		err := c.Validate()
		if tc.ok != (err == nil) || (err != nil && (!errors.Is(err, structs.ErrInvalid) || !strings.Contains(err.Error(), "--isolation-lease-margin"))) {
			t.Errorf("margin %s: %v, want ok=%v (an invalid-input error naming the flag)", tc.margin, err, tc.ok)
		}
	}
}

// TestConfigInputFlags: --storage-root and --snapshot-max-bytes, each
// refusal naming its flag.
func TestConfigInputFlags(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir, base.Dev = "s1", "/tmp/x", true
	if len(base.StorageRoots) != 1 || base.StorageRoots[0] != structs.DefaultStorageRoot || base.SnapshotMaxBytes != 1<<30 {
		t.Fatalf("defaults %v %d", base.StorageRoots, base.SnapshotMaxBytes)
	}
	cases := []struct {
		name  string
		roots []string
		max   int64
		flag  string // "" = valid
	}{
		{"defaults", base.StorageRoots, base.SnapshotMaxBytes, ""},
		{"several roots", []string{"/srv/images", "/dev/san"}, 1 << 20, ""},
		{"relative root", []string{"images"}, 1 << 30, "--storage-root"},
		{"unclean root", []string{"/srv/../etc"}, 1 << 30, "--storage-root"},
		{"root /", []string{"/"}, 1 << 30, "--storage-root"},
		{"root /dev", []string{"/dev"}, 1 << 30, "--storage-root"},
		{"root /etc", []string{"/srv/ok", "/etc"}, 1 << 30, "--storage-root"},
		{"root chime's dir", []string{"/var/lib/chime"}, 1 << 30, "--storage-root"},
		{"tiny snapshot limit", base.StorageRoots, 4096, "--snapshot-max-bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.StorageRoots, c.SnapshotMaxBytes = tc.roots, tc.max
			err := c.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if !errors.Is(err, structs.ErrInvalid) || !strings.Contains(err.Error(), tc.flag) {
				t.Fatalf("%v, want an invalid-input error naming %s", err, tc.flag)
			}
		})
	}
}

func TestConfigAlertmanagerFlags(t *testing.T) {
	base := DefaultConfig()
	base.Name, base.DataDir, base.Dev = "s1", "/tmp/x", true
	if base.AlertmanagerResend != time.Minute || base.ClusterName != "chime" {
		t.Fatalf("defaults: resend %s, cluster %q", base.AlertmanagerResend, base.ClusterName)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		ams     []string
		caFile  string
		resend  time.Duration
		cluster string
		flag    string // "" = valid
	}{
		{"none", nil, "", time.Minute, "chime", ""},
		{"several", []string{"http://127.0.0.1:9093", "https://am.example.net/prefix/"}, "", time.Minute, "chime", ""},
		{"https with CA", []string{"https://am.example.net"}, ca, time.Second, "prod-1", ""},
		{"no scheme", []string{"am.example.net:9093"}, "", time.Minute, "chime", "--alertmanager"},
		{"ftp", []string{"ftp://am.example.net"}, "", time.Minute, "chime", "--alertmanager"},
		{"no host", []string{"http://"}, "", time.Minute, "chime", "--alertmanager"},
		{"query", []string{"http://am:9093/?x=1"}, "", time.Minute, "chime", "--alertmanager"},
		{"CA without https", []string{"http://am:9093"}, ca, time.Minute, "chime", "--alertmanager-ca-file"},
		{"CA missing", []string{"https://am:9093"}, ca + ".nope", time.Minute, "chime", "--alertmanager-ca-file"},
		{"resend too short", nil, "", time.Millisecond, "chime", "--alertmanager-resend"},
		{"resend too long", nil, "", 2 * time.Hour, "chime", "--alertmanager-resend"},
		{"empty cluster", nil, "", time.Minute, "", "--cluster-name"},
		{"cluster with space", nil, "", time.Minute, "a b", "--cluster-name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.Alertmanagers, c.AlertmanagerCAFile, c.AlertmanagerResend, c.ClusterName = tc.ams, tc.caFile, tc.resend, tc.cluster
			err := c.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if !errors.Is(err, structs.ErrInvalid) || !strings.Contains(err.Error(), tc.flag) {
				t.Fatalf("%v, want an invalid-input error naming %s", err, tc.flag)
			}
		})
	}
}
