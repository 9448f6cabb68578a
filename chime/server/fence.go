package server

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
)

// commandFencer runs --fence-command for a node: the executable gets the
// node's name and management address as arguments, and everything the
// servers know of the node in CHIME_FENCE_* environment variables (its
// id, addresses, labels). Exit status 0 means the node is powered off.
type commandFencer struct {
	path    string
	timeout time.Duration
}

// maxFenceOutput bounds the output kept from one run.
const maxFenceOutput = 4096

// Fence runs the command once, bounded by the fencer's timeout.
func (f commandFencer) Fence(ctx context.Context, n structs.Node) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	mgmt := hostOnly(n.APIAddr)
	cmd := exec.CommandContext(ctx, f.path, n.Name, mgmt)
	cmd.Env = append(os.Environ(), fenceEnv(n)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	text := out.String()
	if len(text) > maxFenceOutput {
		text = text[:maxFenceOutput]
	}
	if ctx.Err() == context.DeadlineExceeded {
		return text, fmt.Errorf("%s timed out after %s", f.path, f.timeout)
	}
	if err != nil {
		return text, fmt.Errorf("%s: %w", f.path, err)
	}
	return text, nil
}

// fenceEnv is the node as the fence command's environment.
func fenceEnv(n structs.Node) []string {
	env := []string{
		"CHIME_FENCE_NODE_ID=" + n.ID,
		"CHIME_FENCE_NODE_NAME=" + n.Name,
		"CHIME_FENCE_MGMT_ADDR=" + hostOnly(n.APIAddr),
		"CHIME_FENCE_API_ADDR=" + n.APIAddr,
		"CHIME_FENCE_MIGRATION_ADDR=" + n.MigrationAddr,
	}
	for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
		env = append(env, "CHIME_FENCE_LABEL_"+envKey(k)+"="+n.Labels[k])
	}
	return env
}

// envKey turns a label key into an environment variable suffix:
// upper case, anything but letters and digits as "_".
func envKey(k string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, k)
}

func hostOnly(addr string) string {
	if i := strings.LastIndex(addr, ":"); i > 0 {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}
