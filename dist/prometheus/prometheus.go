// Package prometheus holds chime's Prometheus files, the ones an operator
// copies from dist/prometheus: the scrape configuration (prometheus.yml),
// the alerting rules (chime-rules.yml) and their promtool unit tests
// (chime-rules.test.yml), embedded so that tests and tools use exactly
// the shipped files. WriteConfig writes the shipped configuration with a
// deployment's targets, TLS files and token file in place of the
// examples; nothing else of it changes. See docs/prometheus.md.
//
// It uses the standard library only (chime/layers_test.go).
package prometheus

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// The shipped files, by name.
const (
	ConfigFile    = "prometheus.yml"
	RulesFile     = "chime-rules.yml"
	RulesTestFile = "chime-rules.test.yml"
)

// JobName is the scrape job of prometheus.yml; the rules select it.
const JobName = "chime"

// The rules of chime-rules.yml, by alert name.
var Alerts = []string{"ChimeServerDown", "ChimeRaftLeaderMissing", "ChimeServerLagging", "ChimeNodeUnreachable",
	"ChimeNodeError", "ChimeHeartbeatLatencyHigh", "ChimeTaskFailed"}

//go:embed prometheus.yml chime-rules.yml chime-rules.test.yml
var files embed.FS

// File returns a shipped file (ConfigFile, RulesFile or RulesTestFile).
func File(name string) ([]byte, error) {
	data, err := files.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("dist/prometheus: %w", err)
	}
	return data, nil
}

// The example values of the shipped prometheus.yml that Render replaces.
// Each must occur exactly once in the file (TestShippedValues).
const (
	shippedInterval   = "15s"
	shippedCAFile     = "/etc/prometheus/chime/chime-ca.pem"
	shippedCertFile   = "/etc/prometheus/chime/global-cli.pem"
	shippedKeyFile    = "/etc/prometheus/chime/global-cli-key.pem"
	shippedServerName = "server.global.chime"
	shippedTokenFile  = "/etc/prometheus/chime/token"
	shippedTargets    = "['10.0.0.1:4650', '10.0.0.2:4650', '10.0.0.3:4650']"
)

// Scrape is what a deployment sets in prometheus.yml.
type Scrape struct {
	// Targets are the servers' API addresses, host:port.
	Targets []string
	// CAFile is the cluster CA certificate; CertFile and KeyFile a cli
	// certificate of the cluster and its key (every server requires a
	// client certificate).
	CAFile, CertFile, KeyFile string
	// TokenFile holds an ACL token of role read.
	TokenFile string
	// ServerName is the name the servers' certificates carry;
	// "" keeps server.global.chime (the default cluster, global).
	ServerName string
	// Interval is the scrape and rule evaluation interval; 0 keeps 15 s.
	Interval time.Duration
}

// Render returns the shipped prometheus.yml with s's values in place of
// the examples.
func Render(s Scrape) ([]byte, error) {
	if len(s.Targets) == 0 {
		return nil, errors.New("dist/prometheus: no targets")
	}
	for name, v := range map[string]string{"CAFile": s.CAFile, "CertFile": s.CertFile, "KeyFile": s.KeyFile, "TokenFile": s.TokenFile} {
		if v == "" {
			return nil, fmt.Errorf("dist/prometheus: %s is empty", name)
		}
	}
	if s.Interval < 0 || s.Interval%time.Millisecond != 0 {
		return nil, fmt.Errorf("dist/prometheus: interval %s: want a positive whole number of milliseconds", s.Interval)
	}
	cfg, err := File(ConfigFile)
	if err != nil {
		return nil, err
	}
	type edit struct{ key, old, new string }
	edits := []edit{
		{"ca_file: ", shippedCAFile, quote(s.CAFile)},
		{"cert_file: ", shippedCertFile, quote(s.CertFile)},
		{"key_file: ", shippedKeyFile, quote(s.KeyFile)},
		{"credentials_file: ", shippedTokenFile, quote(s.TokenFile)},
		{"- targets: ", shippedTargets, quote(s.Targets)},
	}
	if s.ServerName != "" {
		edits = append(edits, edit{"server_name: ", shippedServerName, quote(s.ServerName)})
	}
	if s.Interval > 0 {
		ms := fmt.Sprintf("%dms", s.Interval.Milliseconds())
		edits = append(edits, edit{"scrape_interval: ", shippedInterval, ms}, edit{"evaluation_interval: ", shippedInterval, ms})
	}
	for _, e := range edits {
		old := []byte(e.key + e.old + "\n")
		if n := bytes.Count(cfg, old); n != 1 {
			return nil, fmt.Errorf("dist/prometheus: %s holds %q %d times, want once", ConfigFile, old, n)
		}
		cfg = bytes.Replace(cfg, old, []byte(e.key+e.new+"\n"), 1)
	}
	return cfg, nil
}

// quote writes v as JSON, which YAML reads as the same string or list.
func quote(v any) string {
	data, _ := json.Marshal(v) // strings and string slices always encode
	return string(data)
}

// WriteConfig writes prometheus.yml (Render) and chime-rules.yml, which
// it loads, into dir, and returns the configuration's path.
func WriteConfig(dir string, s Scrape) (string, error) {
	cfg, err := Render(s)
	if err != nil {
		return "", err
	}
	rules, err := File(RulesFile)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("dist/prometheus: %w", err)
	}
	path := filepath.Join(dir, ConfigFile)
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		return "", fmt.Errorf("dist/prometheus: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, RulesFile), rules, 0o644); err != nil {
		return "", fmt.Errorf("dist/prometheus: %w", err)
	}
	return path, nil
}
