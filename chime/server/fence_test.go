package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// The fence command is a real executable: a shell script that prints what
// it was given, fails, or hangs.
func TestCommandFencer(t *testing.T) {
	n := structs.Node{ID: "0c1d", Name: "hv1", APIAddr: "10.0.0.11:4660", MigrationAddr: "10.0.0.11",
		Labels: map[string]string{"rack": "r1", "bmc-addr": "10.9.0.11"}}
	tests := []struct {
		name    string
		script  string
		timeout time.Duration
		wantOut []string
		wantErr string
	}{
		{name: "succeeds with args and env", script: `echo "args=$1 $2 id=$CHIME_FENCE_NODE_ID bmc=$CHIME_FENCE_LABEL_BMC_ADDR rack=$CHIME_FENCE_LABEL_RACK"`,
			timeout: 5 * time.Second, wantOut: []string{"args=hv1 10.0.0.11", "id=0c1d", "bmc=10.9.0.11", "rack=r1"}},
		{name: "fails", script: `echo "ipmi: no session" >&2; exit 3`, timeout: 5 * time.Second,
			wantOut: []string{"ipmi: no session"}, wantErr: "exit status 3"},
		{name: "times out", script: `sleep 30`, timeout: time.Second, wantErr: "timed out after 1s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "fence")
			if err := os.WriteFile(path, []byte("#!/bin/sh\n"+tc.script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out, err := commandFencer{path: path, timeout: tc.timeout}.Fence(context.Background(), n)
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			if took := time.Since(start); took > tc.timeout+5*time.Second {
				t.Fatalf("took %s with a timeout of %s", took, tc.timeout)
			}
		})
	}
}
