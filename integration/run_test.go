package integration

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The repository's entry points (README.md, ./run, .ci/run): the README's
// first two commands are the demo and every test, CI runs exactly the
// second, and ./run is POSIX sh that refuses unknown recipes and does the
// steps docs/testing.md#every-test-from-nothing describes. Nothing is
// installed or started here: ./run -n prints its steps.

const repoRoot = ".."

// readmeCommands are the commands of the README's first code block, which
// must open the file (text before a '#' comment, trimmed).
func readmeCommands(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "```") {
		t.Fatalf("README.md does not open with a code block: first line %q", lines[0])
	}
	var cmds []string
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "```") {
			return cmds
		}
		if c, _, _ := strings.Cut(l, "#"); strings.TrimSpace(c) != "" {
			cmds = append(cmds, strings.Join(strings.Fields(c), " "))
		}
	}
	t.Fatal("README.md: the first code block is not closed")
	return nil
}

func TestREADMEOpensWithTheTwoCommands(t *testing.T) {
	cmds := readmeCommands(t)
	if len(cmds) < 2 || cmds[0] != "./run demo" || cmds[1] != "./run test" {
		t.Fatalf("README.md's first commands are %q, want [./run demo ./run test]", cmds)
	}
	t.Logf("README.md opens with %q", cmds[:2])
}

// .ci/run installs the prerequisites itself, then runs the README's test
// command, as its last command.
func TestCIRunEndsWithTheREADMETestCommand(t *testing.T) {
	want := readmeCommands(t)[1]
	data, err := os.ReadFile(filepath.Join(repoRoot, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			cmds = append(cmds, l)
		}
	}
	if len(cmds) == 0 || cmds[len(cmds)-1] != want {
		t.Fatalf(".ci/run's last command is %q, want the README's test command %q", cmds[len(cmds)-1], want)
	}
	for _, pre := range []string{"scripts/install-deps.sh", "scripts/libvirt-up.sh"} {
		if !slices.Contains(cmds[:len(cmds)-1], pre) {
			t.Errorf(".ci/run does not run %s before %s", pre, want)
		}
	}
}

func TestRunIsPOSIXSh(t *testing.T) {
	path := filepath.Join(repoRoot, "run")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&0o111 == 0 {
		t.Errorf("./run is not executable (%v)", st.Mode())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(string(data), "\n"); first != "#!/bin/sh" {
		t.Errorf("./run starts with %q, want #!/bin/sh", first)
	}
	shells := []string{"sh"}
	if _, err := exec.LookPath("dash"); err == nil {
		shells = append(shells, "dash") // Debian's sh, and strict about bashisms
	}
	for _, sh := range shells {
		if out, err := exec.Command(sh, "-n", path).CombinedOutput(); err != nil {
			t.Errorf("%s -n run: %v\n%s", sh, err, out)
		}
	}
}

// runScript runs ./run (in dir, repoRoot unless given) with args and env
// added to the test's environment; it returns stdout, stderr and the exit
// status.
type runResult struct {
	stdout, stderr string
	code           int
}

func runScript(t *testing.T, dir string, cred *syscall.Credential, env []string, args ...string) runResult {
	t.Helper()
	if dir == "" {
		dir = repoRoot
	}
	cmd := exec.Command("/bin/sh", append([]string{"./run"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("./run %v still running after 60s", args)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return runResult{out.String(), errb.String(), code}
}

// An unknown recipe is refused at once, with its name and the recipes,
// before anything is installed.
func TestRunRefusesAnUnknownRecipe(t *testing.T) {
	start := time.Now()
	r := runScript(t, "", nil, nil, "no-such-recipe", "x")
	took := time.Since(start)
	if r.code != 2 {
		t.Fatalf("./run no-such-recipe exited %d, want 2\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"no recipe 'no-such-recipe' in the Justfile", "demo", "test", "lab-up"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("./run no-such-recipe: stderr %q does not say %q", r.stderr, want)
		}
	}
	if strings.Contains(r.stdout+r.stderr, "install-deps") {
		t.Errorf("./run no-such-recipe installed something: %s%s", r.stdout, r.stderr)
	}
	if r := runScript(t, "", nil, nil, "--bogus"); r.code != 2 || !strings.Contains(r.stderr, "unknown option '--bogus'") {
		t.Errorf("./run --bogus: exit %d, stderr %q; want 2 and the option named", r.code, r.stderr)
	}
	t.Logf("./run no-such-recipe: exit 2 after %v: %s", took.Round(time.Millisecond), strings.TrimSpace(strings.Split(r.stderr, "\n")[0]))
}

// ./run's list of recipes (read from the Justfile by sed) is just's own.
func TestRunKnowsTheJustfilesRecipes(t *testing.T) {
	r := runScript(t, "", nil, nil, "--list")
	if r.code != 0 {
		t.Fatalf("./run --list: exit %d: %s", r.code, r.stderr)
	}
	got := strings.Fields(r.stdout)
	slices.Sort(got)
	just, err := exec.LookPath("just")
	if err != nil {
		if inCI() {
			t.Fatal("just is not installed (scripts/install-deps.sh installs it)")
		}
		t.Skip("just is not installed")
	}
	cmd := exec.Command(just, "--summary")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("just --summary: %v", err)
	}
	want := strings.Fields(string(out))
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("./run --list: %v\njust --summary: %v", got, want)
	}
}

// sudoLine is a step ./run runs through sudo: "+ [exec] sudo
// [--preserve-env=…] env PATH=… CMD".
var sudoLine = regexp.MustCompile(`^\+ (exec )?sudo (--preserve-env=\S+ )?env PATH=\S+ (.*)$`)

// steps are ./run -n's steps, a step run through sudo written "+ [exec ]root: CMD".
func steps(out string) []string {
	var s []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if m := sudoLine.FindStringSubmatch(l); m != nil {
			l = "+ " + m[1] + "root: " + m[3]
		}
		s = append(s, l)
	}
	return s
}

// What ./run does for each kind of recipe: as root, as a user through sudo
// (a stand-in sudo on PATH; -n runs nothing), and with no just installed.
func TestRunSteps(t *testing.T) {
	// A directory of the few commands ./run uses, and a stand-in sudo: the
	// PATH of a machine where just is missing.
	bin, err := os.MkdirTemp("", "chime-run-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bin) })
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"dirname", "grep", "sed", "tr", "id", "cut", "env", "go"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "sudo"), []byte("#!/bin/sh\necho 'stand-in sudo: not run' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, justErr := exec.LookPath("just")
	haveJust := justErr == nil
	if !haveJust && inCI() {
		t.Fatal("just is not installed (scripts/install-deps.sh installs it)")
	}

	root := os.Geteuid() == 0
	// As the test's own user (root in CI; a stand-in sudo otherwise).
	var ownEnv []string
	if !root {
		ownEnv = append(ownEnv, "PATH="+bin+":"+os.Getenv("PATH"))
	}
	r := func(cmd string) string { // a step as root
		if root {
			return "+ " + cmd
		}
		return "+ root: " + cmd
	}
	rx := func(cmd string) string { // the last step, exec'd as root
		if root {
			return "+ exec " + cmd
		}
		return "+ exec root: " + cmd
	}
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"demo"}, []string{r("scripts/install-deps.sh"), r("scripts/libvirt-up.sh"), rx("just demo")}},
		{[]string{"test"}, []string{r("scripts/install-deps.sh"), r("scripts/libvirt-up.sh"), rx("just test")}},
		{[]string{"lab-up", "5"}, []string{r("scripts/install-deps.sh"), r("scripts/libvirt-up.sh"), rx("just lab-up 5")}},
		{[]string{"lab-down"}, []string{r("scripts/install-deps.sh"), rx("just lab-down")}},
		{[]string{"deps"}, []string{rx("just deps")}}, // just deps runs both scripts itself
		{[]string{"build"}, []string{"+ exec just build"}},
		{[]string{"sim", "100"}, []string{"+ exec just sim 100"}},
	}
	if haveJust {
		for _, c := range cases {
			res := runScript(t, "", nil, ownEnv, append([]string{"-n"}, c.args...)...)
			if got := steps(res.stdout); res.code != 0 || !slices.Equal(got, c.want) {
				t.Errorf("./run -n %s: exit %d, steps %q, want %q (stderr %q)", strings.Join(c.args, " "), res.code, got, c.want, res.stderr)
			}
			if !root && !strings.Contains(res.stderr, "through sudo") && strings.Contains(res.stdout, "sudo") {
				t.Errorf("./run -n %s used sudo without saying so: %q", strings.Join(c.args, " "), res.stderr)
			}
		}
	}

	// No just on PATH: it is installed first (only just for a recipe that
	// needs nothing else).
	noJust := []string{"PATH=" + bin}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"build"}, []string{r("scripts/install-deps.sh --just-only"), "+ exec just build"}},
		{[]string{"deps"}, []string{r("scripts/install-deps.sh"), rx("just deps")}},
		{[]string{"test"}, []string{r("scripts/install-deps.sh"), r("scripts/libvirt-up.sh"), rx("just test")}},
	} {
		res := runScript(t, "", nil, noJust, append([]string{"-n"}, c.args...)...)
		if got := steps(res.stdout); res.code != 0 || !slices.Equal(got, c.want) {
			t.Errorf("no just: ./run -n %s: exit %d, steps %q, want %q (stderr %q)", strings.Join(c.args, " "), res.code, got, c.want, res.stderr)
		}
	}

	// just installed by npm into a global bin directory that is not on
	// PATH: ./run and install-deps.sh find it there (npm prefix -g).
	npmPrefix := filepath.Join(bin, "npm-global")
	if err := os.MkdirAll(filepath.Join(npmPrefix, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(npmPrefix, "bin", "just"), []byte("#!/bin/sh\necho 'just 0.0.0 (stand-in)'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	npm := "#!/bin/sh\nif [ \"$1 $2\" = 'prefix -g' ]; then echo '" + npmPrefix + "'; exit 0; fi\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "npm"), []byte(npm), 0o755); err != nil {
		t.Fatal(err)
	}
	res := runScript(t, "", nil, noJust, "-n", "build")
	if got := steps(res.stdout); res.code != 0 || !slices.Equal(got, []string{"+ exec just build"}) {
		t.Errorf("just in npm's bin directory, off PATH: ./run -n build: exit %d, steps %q, want just found (stderr %q)", res.code, got, res.stderr)
	}
	deps := exec.Command("/bin/bash", "scripts/install-deps.sh", "--just-only")
	deps.Dir = repoRoot
	deps.Env = append(os.Environ(), noJust...)
	if out, err := deps.CombinedOutput(); err != nil || !strings.Contains(string(out), "just 0.0.0 (stand-in)") {
		t.Errorf("just in npm's bin directory, off PATH: install-deps.sh --just-only: %v\n%s", err, out)
	}
	if err := os.Remove(filepath.Join(bin, "npm")); err != nil {
		t.Fatal(err)
	}

	if !root {
		return
	}
	// As an unprivileged user (nobody) on a copy of run and the Justfile
	// that it can read: the root steps go through sudo, which ./run says,
	// and the CI and CHIME_* variables travel along.
	dir, err := os.MkdirTemp("", "chime-run-copy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, f := range []string{"run", "Justfile"} {
		data, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
	res = runScript(t, dir, nobody, []string{"PATH=" + bin, "HOME=/nonexistent", "CHIME_FLEET_PREFIX=runt"}, "-n", "test")
	want := []string{"+ root: scripts/install-deps.sh", "+ root: scripts/libvirt-up.sh", "+ exec root: just test"}
	if got := steps(res.stdout); res.code != 0 || !slices.Equal(got, want) {
		t.Fatalf("as nobody: ./run -n test: exit %d, steps %q, want %q (stderr %q)", res.code, got, want, res.stderr)
	}
	if !strings.Contains(res.stderr, "not root: running the steps of 'test' that need root through sudo") {
		t.Errorf("as nobody: ./run -n test does not say it uses sudo: %q", res.stderr)
	}
	if !strings.Contains(res.stdout, "--preserve-env=") || !strings.Contains(res.stdout, "CHIME_FLEET_PREFIX") {
		t.Errorf("as nobody: the sudo steps do not keep CHIME_FLEET_PREFIX: %q", res.stdout)
	}
	// No sudo at all: a clear refusal.
	if err := os.Remove(filepath.Join(bin, "sudo")); err != nil {
		t.Fatal(err)
	}
	res = runScript(t, dir, nobody, []string{"PATH=" + bin, "HOME=/nonexistent"}, "-n", "demo")
	if res.code == 0 || !strings.Contains(res.stderr, "'demo' needs root") || !strings.Contains(res.stderr, "install sudo") {
		t.Errorf("as nobody without sudo: ./run -n demo: exit %d, stderr %q; want a refusal naming root and sudo", res.code, res.stderr)
	}
	// build itself needs no root, but installing the missing just does.
	res = runScript(t, dir, nobody, []string{"PATH=" + bin, "HOME=/nonexistent"}, "-n", "build")
	if res.code == 0 || !strings.Contains(res.stderr, "'build' needs root") {
		t.Errorf("as nobody without sudo or just: ./run -n build: exit %d, stderr %q; want a refusal naming root", res.code, res.stderr)
	}
}
