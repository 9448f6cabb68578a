package prometheus

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// promtool finds the real promtool (Debian package prometheus, installed
// by scripts/install-deps.sh): missing, the test skips, or fails under
// CI=true.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool missing under CI=true (scripts/install-deps.sh installs the Debian package prometheus): %v", err)
		}
		t.Skipf("promtool not installed (apt-get install prometheus): %v", err)
	}
	return p
}

// writeFiles makes the files a rendered configuration names (promtool
// check config wants them to exist) and returns its Scrape.
func writeFiles(t *testing.T, dir string) Scrape {
	t.Helper()
	s := Scrape{Targets: []string{"127.0.0.1:4650", "127.0.0.2:4650"}, ServerName: "server.lab.chime", Interval: 1500 * time.Millisecond}
	s.CAFile, s.CertFile, s.KeyFile, s.TokenFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cli.pem"),
		filepath.Join(dir, "cli key.pem"), filepath.Join(dir, "token")
	for _, f := range []string{s.CAFile, s.CertFile, s.KeyFile, s.TokenFile} {
		if err := os.WriteFile(f, []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// TestPromtool runs the real promtool on the shipped files: the
// configuration as shipped (syntax: its example files do not exist here)
// and as WriteConfig writes it (fully, with the rules it loads), the
// rules, and their unit tests.
func TestPromtool(t *testing.T) {
	bin := promtool(t)
	dir := t.TempDir()
	cfg, err := WriteConfig(dir, writeFiles(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // in the output
	}{
		{"check config, shipped", []string{"check", "config", "--syntax-only", ConfigFile}, "SUCCESS"},
		{"check config, written", []string{"check", "config", cfg}, "SUCCESS: 1 rule files found"},
		{"check rules", []string{"check", "rules", RulesFile}, "SUCCESS: 7 rules found"},
		{"test rules", []string{"test", "rules", RulesTestFile}, "SUCCESS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			start := time.Now()
			out, err := exec.CommandContext(ctx, bin, tc.args...).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte(tc.want)) {
				t.Fatalf("promtool %s: %v, want %q in:\n%s", strings.Join(tc.args, " "), err, tc.want, out)
			}
			t.Logf("promtool %s: ok in %s", strings.Join(tc.args, " "), time.Since(start).Round(time.Millisecond))
		})
	}
	if len(Alerts) != 7 {
		t.Errorf("Alerts lists %d rules, promtool found 7", len(Alerts))
	}
}

// TestEveryRuleTested: the rules file defines exactly Alerts, and the
// unit tests expect alerts of every one of them.
func TestEveryRuleTested(t *testing.T) {
	rules, err := File(RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	tests, err := File(RulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var defined []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\S+)$`).FindAllSubmatch(rules, -1) {
		defined = append(defined, string(m[1]))
	}
	if !slices.Equal(defined, Alerts) {
		t.Errorf("%s defines %v, Alerts lists %v", RulesFile, defined, Alerts)
	}
	// A rule is tested when some alert_rule_test of it expects an alert
	// (not only exp_alerts: []).
	firing := map[string]bool{}
	re := regexp.MustCompile(`(?m)^\s*alertname: (\S+)\n\s*exp_alerts:\n\s*- exp_labels:`)
	for _, m := range re.FindAllSubmatch(tests, -1) {
		firing[string(m[1])] = true
	}
	for _, a := range Alerts {
		if !firing[a] {
			t.Errorf("%s: no test expects %s to fire", RulesTestFile, a)
		}
	}
}

// TestRender: the shipped example values are replaced, each exactly
// once, and nothing else changes; bad input is refused.
func TestRender(t *testing.T) {
	shipped, err := File(ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	s := Scrape{Targets: []string{"127.0.0.1:1", "[::1]:2"}, CAFile: "/a/ca.pem", CertFile: "/a/cli.pem", KeyFile: "/a/cli key.pem",
		TokenFile: "/a/token", ServerName: "server.lab.chime", Interval: time.Second}
	got, err := Render(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"  scrape_interval: 1000ms\n", "  evaluation_interval: 1000ms\n", `ca_file: "/a/ca.pem"`, `cert_file: "/a/cli.pem"`,
		`key_file: "/a/cli key.pem"`, `credentials_file: "/a/token"`, `server_name: "server.lab.chime"`,
		`- targets: ["127.0.0.1:1","[::1]:2"]`, "job_name: " + JobName + "\n", "  - " + RulesFile + "\n",
	} {
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("rendered config lacks %q:\n%s", want, got)
		}
	}
	for _, old := range []string{shippedCAFile, shippedCertFile, shippedKeyFile, shippedTokenFile, shippedServerName, shippedTargets} {
		if bytes.Contains(got, []byte(old)) {
			t.Errorf("rendered config still holds %q", old)
		}
	}
	if a, b := bytes.Count(shipped, []byte("\n")), bytes.Count(got, []byte("\n")); a != b {
		t.Errorf("rendering changed the line count: %d → %d", a, b)
	}
	keep, err := Render(Scrape{Targets: []string{"h:1"}, CAFile: "c", CertFile: "c", KeyFile: "k", TokenFile: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(keep, []byte("server_name: "+shippedServerName+"\n")) || !bytes.Contains(keep, []byte("scrape_interval: "+shippedInterval+"\n")) {
		t.Errorf("zero ServerName and Interval changed the shipped ones:\n%s", keep)
	}

	bad := []struct {
		name string
		s    Scrape
		want string
	}{
		{"no targets", Scrape{CAFile: "c", CertFile: "c", KeyFile: "k", TokenFile: "t"}, "no targets"},
		{"no CA", Scrape{Targets: []string{"h:1"}, CertFile: "c", KeyFile: "k", TokenFile: "t"}, "CAFile is empty"},
		{"no cert", Scrape{Targets: []string{"h:1"}, CAFile: "c", KeyFile: "k", TokenFile: "t"}, "CertFile is empty"},
		{"no key", Scrape{Targets: []string{"h:1"}, CAFile: "c", CertFile: "c", TokenFile: "t"}, "KeyFile is empty"},
		{"no token", Scrape{Targets: []string{"h:1"}, CAFile: "c", CertFile: "c", KeyFile: "k"}, "TokenFile is empty"},
		{"odd interval", Scrape{Targets: []string{"h:1"}, CAFile: "c", CertFile: "c", KeyFile: "k", TokenFile: "t", Interval: time.Microsecond}, "milliseconds"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Render(tc.s); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Render: %v, want an error with %q", err, tc.want)
			}
		})
	}
}
