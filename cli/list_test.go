package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server"
	"github.com/chime-ha/chime/chime/structs"
)

// createWhenReady creates a VM, retrying while the dev server elects itself.
func createWhenReady(t *testing.T, cl *api.Client, req api.CreateVMRequest) *structs.VM {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		vm, err := cl.CreateVM(context.Background(), req)
		if err == nil {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("create VM %s: %v", req.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// `chime vm list` with --node, --state, --desired and --ha lists the VMs
// that match every filter given; a wrong filter value is an error that
// names the flag, and lists nothing.
func TestVMListFilters(t *testing.T) {
	// One node: admission control would refuse the ha VM.
	addr := devServer(t, func(c *server.Config) { c.HATolerateFailures = 0 })
	cl := api.NewClient(addr)
	createWhenReady(t, cl, api.CreateVMRequest{Name: "early", VCPUs: 128, Memory: 64}) // fits no node: pending
	hv1 := uuid.NewString()
	if _, err := cl.Register(context.Background(), api.RegisterRequest{ID: hv1, Name: "hv1", APIAddr: "127.0.0.1:1", VCPUs: 64, MemoryMiB: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	createWhenReady(t, cl, api.CreateVMRequest{Name: "web", VCPUs: 1, Memory: 64, HA: true})
	createWhenReady(t, cl, api.CreateVMRequest{Name: "db", VCPUs: 1, Memory: 64, Stopped: true})

	names := func(args ...string) string {
		out := runOut(t, append([]string{"vm", "list", "--address", addr, "-o", "json"}, args...)...)
		var vms []structs.VM
		if err := json.Unmarshal([]byte(out), &vms); err != nil {
			t.Fatalf("vm list %v: %v\n%s", args, err, out)
		}
		var n []string
		for _, v := range vms {
			n = append(n, v.Name)
		}
		sort.Strings(n)
		return strings.Join(n, ",")
	}
	tests := []struct {
		args []string
		want string
	}{
		{nil, "db,early,web"},
		{[]string{"--node", "hv1"}, "db,web"},
		{[]string{"--node", hv1[:8]}, "db,web"},
		{[]string{"--state", "pending"}, "early"},
		{[]string{"--desired", "stopped"}, "db"},
		{[]string{"--ha"}, "web"},
		{[]string{"--ha=false"}, "db,early"},
		{[]string{"--node", "hv1", "--desired", "running"}, "web"},
		{[]string{"--state", "held"}, ""},
	}
	for _, tt := range tests {
		if got := names(tt.args...); got != tt.want {
			t.Errorf("vm list %v: %q, want %q", tt.args, got, tt.want)
		}
	}
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"--node", "nowhere"}, `no node "nowhere"`},
		{[]string{"--state", "sleeping"}, `"sleeping" is not a VM state`},
		{[]string{"--desired", "paused"}, `"paused" is not a desired state`},
	}
	for _, tt := range bad {
		var out bytes.Buffer
		old := stdout
		stdout = &out
		err := App().RunContext(context.Background(), append([]string{"chime", "vm", "list", "--address", addr}, tt.args...))
		stdout = old
		var ae *api.Error
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &ae) || ae.Status != 400 || ae.Field != strings.TrimPrefix(tt.args[0], "--") {
			t.Errorf("vm list %v: %v (%+v), want a 400 naming %s: %q", tt.args, err, ae, tt.args[0], tt.want)
		}
		if out.Len() != 0 {
			t.Errorf("vm list %v printed %q on error", tt.args, out.String())
		}
	}
}

// `chime vm list --watch` prints the list, then again after each change,
// and ends cleanly when interrupted.
func TestVMListWatch(t *testing.T) {
	addr := devServer(t)
	cl := api.NewClient(addr)
	createWhenReady(t, cl, api.CreateVMRequest{Name: "first", VCPUs: 1, Memory: 64})
	var mu sync.Mutex
	var out bytes.Buffer
	old := stdout
	stdout = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	defer func() { stdout = old }()
	printed := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- App().RunContext(ctx, []string{"chime", "vm", "list", "--watch", "--address", addr}) }()
	waitFor := func(what string, ok func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok(printed()) {
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("%s: --watch printed:\n%s", what, printed())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("the first list", func(s string) bool { return strings.Contains(s, "first") })
	if strings.Contains(printed(), "second") {
		t.Fatal("second listed before it was created")
	}
	createWhenReady(t, cl, api.CreateVMRequest{Name: "second", VCPUs: 1, Memory: 64})
	waitFor("the list after the create", func(s string) bool { return strings.Contains(s, "second") })
	s := printed()
	if strings.Count(s, "NAME") < 2 || !strings.Contains(s, ", index ") {
		t.Fatalf("want two tables, the second after a time stamp and index line:\n%s", s)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("--watch ended with %v after the interrupt", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("--watch did not end within 10 s of the interrupt")
	}
	t.Logf("--watch printed:\n%s", s)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestMain lets the test binary act as the chime command (for the
// completion test, which needs a chime on PATH for bash to call).
func TestMain(m *testing.M) {
	if os.Getenv("CHIME_CLI_TEST_AS_CHIME") == "1" {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}

// The bash completion script, sourced into a real bash, completes
// commands, subcommands and flags by asking the binary; the zsh script
// parses; an unknown shell is refused.
func TestCompletion(t *testing.T) {
	bashPath, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(bin, "chime")); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "chime.bash")
	if err := os.WriteFile(script, []byte(runOut(t, "completion", "bash")), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		words string
		want  []string
		not   string
	}{
		{"chime v", []string{"vm"}, "node"},
		{"chime vm li", []string{"list"}, "create"},
		{"chime vm list --st", []string{"--state"}, "--node"},
		{"chime node ", []string{"list", "show", "drain", "rebuild"}, ""},
		{"chime completion ", []string{"bash", "zsh"}, ""},
	}
	for _, tt := range tests {
		words := strings.Split(tt.words, " ")
		arr := ""
		for _, w := range words {
			arr += " '" + w + "'"
		}
		sh := "source " + script + "; COMP_WORDS=(" + arr + "); COMP_CWORD=" + strconv.Itoa(len(words)-1) + "; _chime_complete; printf '%s\\n' \"${COMPREPLY[@]}\""
		cmd := exec.Command(bashPath, "--norc", "-c", sh)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "CHIME_CLI_TEST_AS_CHIME=1")
		got, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", tt.words, err, got)
		}
		lines := strings.Fields(string(got))
		for _, w := range tt.want {
			if !slices.Contains(lines, w) {
				t.Errorf("completing %q: %v, want %s among them", tt.words, lines, w)
			}
		}
		if tt.not != "" && slices.Contains(lines, tt.not) {
			t.Errorf("completing %q: %v, want no %s", tt.words, lines, tt.not)
		}
	}
	if zsh, err := exec.LookPath("zsh"); err == nil {
		f := filepath.Join(t.TempDir(), "_chime")
		if err := os.WriteFile(f, []byte(runOut(t, "completion", "zsh")), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(zsh, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("zsh -n: %v\n%s", err, out)
		}
	} else {
		t.Log("no zsh here: the zsh script is not parsed")
	}
	if err := App().RunContext(context.Background(), []string{"chime", "completion", "fish"}); err == nil || !strings.Contains(err.Error(), `"fish" is not bash or zsh`) {
		t.Errorf("completion fish: %v", err)
	}
}
