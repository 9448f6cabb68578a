package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestApplyConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		file    string
		args    []string
		wantErr string
		check   func(c *cli.Context) string
	}{
		{name: "values and lists", file: `{"name":"s1","api-port":5000,"alarm-webhook":["http://a","http://b"],"heartbeat-interval":"2s"}`,
			check: func(c *cli.Context) string {
				if c.String("name") != "s1" || c.Int("api-port") != 5000 || len(c.StringSlice("alarm-webhook")) != 2 || c.Duration("heartbeat-interval").String() != "2s" {
					return "values not applied"
				}
				return ""
			}},
		{name: "command line wins", file: `{"name":"from-file"}`, args: []string{"--name", "from-flag"},
			check: func(c *cli.Context) string {
				if c.String("name") != "from-flag" {
					return "file overrode the command line: " + c.String("name")
				}
				return ""
			}},
		{name: "unknown key", file: `{"colour":"red"}`, wantErr: `unknown key "colour"`},
		{name: "bad value", file: `{"api-port":"many"}`, wantErr: `key "api-port"`},
		{name: "list for a single flag", file: `{"name":["a","b"]}`, wantErr: `takes one value`},
		{name: "not json", file: `name = s1`, wantErr: "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := write(strings.ReplaceAll(tt.name, " ", "_")+".json", tt.file)
			var got error
			var problem string
			cmd := serverCommand()
			cmd.Action = func(c *cli.Context) error {
				got = applyConfigFile(c)
				if got == nil && tt.check != nil {
					problem = tt.check(c)
				}
				return nil
			}
			app := &cli.App{Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
			if err := app.Run(append([]string{"chime", "server", "--config", path}, tt.args...)); err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" {
				if got == nil || !strings.Contains(got.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", got, tt.wantErr)
				}
				return
			}
			if got != nil || problem != "" {
				t.Fatalf("err = %v, %s", got, problem)
			}
		})
	}
}
