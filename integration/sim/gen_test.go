package sim

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The scenario generator: the matrix of named scenarios (every HA
// operation interrupted by every fault, leader changes at every step of
// a task, variants of the lab's six failure scenarios) written as
// scenario directories. The generated cmds files are checked in and
// reviewed like hand-written ones; run
//
//	go test ./integration/sim -run TestGenerate -sim.gen
//	go test ./integration/sim -run 'TestScenarios/(op|leader|lab)-' -update
//
// to rewrite them and their expect files. A regenerated cmds keeps the
// "known-failure: N" line (and the "# known-failure ..." comment lines
// above it) of the file it replaces, so that a mark set after a review
// survives, and goes when it is deleted from the file.

var flagGen = flag.Bool("sim.gen", false, "write the generated scenarios (op-*, leader-*, lab-*) under testdata/scenarios")

// genScenario is one generated scenario.
type genScenario struct {
	name   string
	header []string // what it covers (comment lines, without "# ")
	lines  []string // commands and waits
}

// genOp is an HA operation: the commands that prepare it, the operation
// itself, the host and VM it concerns (the fault's target), and what
// follows the fault's undo (an operator's recovery).
type genOp struct {
	name, what string
	setup      []string
	op         []string
	host, vm   string
	after      []string
}

// The base fleet: three hosts, vm1 on h1, vm2 on h2, vm3 on h3 (placement
// spreads them in that order).
var genBase = []string{"create vm1", "create vm2", "create vm3", "wait 30s"}

var genOps = []genOp{
	{name: "create", what: "create a VM", op: []string{"create vm4"}, host: "h1", vm: "vm1"},
	{name: "start", what: "start a stopped VM", setup: []string{"stop vm1", "wait 30s"}, op: []string{"start vm1"}, host: "h1", vm: "vm1"},
	{name: "stop", what: "stop a running VM", op: []string{"stop vm1"}, host: "h1", vm: "vm1"},
	{name: "delete", what: "delete a running VM", op: []string{"delete vm1"}, host: "h1", vm: "vm1"},
	{name: "restart", what: "`chime vm restart` of a running VM (stop, wait for the agent's report, start)", op: []string{"restart vm1"}, host: "h1", vm: "vm1"},
	{name: "migrate", what: "live-migrate a VM h1 → h2 (the fault hits the source)", op: []string{"migrate vm1 h2"}, host: "h1", vm: "vm1"},
	{name: "migrate-dest", what: "live-migrate a VM h1 → h2 (the fault hits the destination)", op: []string{"migrate vm1 h2"}, host: "h2", vm: "vm1"},
	{name: "evacuate", what: "evacuate h1 (live migrations away, node disabled)", op: []string{"evacuate h1"}, host: "h1", vm: "vm1",
		after: []string{"enable h1"}},
	{name: "drain", what: "drain h1 (its VMs stopped, node drained)", op: []string{"drain h1"}, host: "h1", vm: "vm1",
		after: []string{"enable h1"}},
	{name: "rebuild", what: "rebuild a drained h1 (without --confirm-fenced)", setup: []string{"drain h1", "wait 10s"},
		op: []string{"rebuild h1"}, host: "h1", vm: "vm1", after: []string{"enable h1"}},
	{name: "rebuild-confirmed", what: "rebuild a drained h1 with --confirm-fenced (true: the drain stopped its VMs)",
		setup: []string{"drain h1", "wait 10s"}, op: []string{"rebuild h1 confirm-fenced"}, host: "h1", vm: "vm1", after: []string{"enable h1"}},
	{name: "enable", what: "enable a disabled h1", setup: []string{"disable h1", "wait 10s"}, op: []string{"enable h1"}, host: "h1", vm: "vm1"},
	{name: "disable", what: "disable h1", op: []string{"disable h1"}, host: "h1", vm: "vm1", after: []string{"enable h1"}},
	{name: "agent-drain", what: "`chime agent drain` on h1 (released afterwards by `node enable`)",
		op: []string{"agent-drain h1"}, host: "h1", vm: "vm1", after: []string{"enable h1"}},
	{name: "agent-migrate", what: "`chime agent migrate` of vm1 h1 → h2 over the business network (the fault hits the source)",
		op: []string{"agent-migrate h1 vm1 h2"}, host: "h1", vm: "vm1"},
	{name: "agent-migrate-dest", what: "`chime agent migrate` of vm1 h1 → h2 over the business network (the fault hits the destination)",
		op: []string{"agent-migrate h1 vm1 h2"}, host: "h2", vm: "vm1"},
}

// genFault is a fault: its commands (H: the host, V: the VM), how long it
// lasts, its undo.
type genFault struct {
	name, what string
	do         []string
	hold       string
	undo       []string
	recover    []string // the operator's runbook after the undo (reset-secret after a lost state dir)
}

var genFaults = []genFault{
	{"power-off", "power loss of H, local disk kept", []string{"power-off H"}, "1m", []string{"power-on H"}, nil},
	{"power-off-lose-disk", "power loss of H, local disk lost (libvirt definitions and the agent's state dir); the operator runs `chime node reset-secret` when it is back", []string{"power-off H lose-disk"}, "1m", []string{"power-on H"},
		[]string{"wait 2m", "reset-secret H"}},
	{"agent-crash", "H's agent crashes (state dir kept) and restarts", []string{"agent-crash H"}, "30s", []string{"agent-restart H"}, nil},
	{"agent-crash-lose-state", "H's agent crashes with its state dir lost and restarts; the operator runs `chime node reset-secret`", []string{"agent-crash H lose-state"}, "30s", []string{"agent-restart H"},
		[]string{"wait 1m", "reset-secret H"}},
	{"freeze", "H's agent frozen (SIGSTOP) for a minute, then thawed", []string{"freeze H"}, "1m", []string{"thaw H"}, nil},
	{"mgmt-one-way-out", "management one-way: H's packets to every server lost, the servers' to H delivered",
		[]string{"cut H s1 mgmt one-way", "cut H s2 mgmt one-way", "cut H s3 mgmt one-way"}, "1m",
		[]string{"restore H s1 mgmt one-way", "restore H s2 mgmt one-way", "restore H s3 mgmt one-way"}, nil},
	{"mgmt-one-way-in", "management one-way: the servers' packets to H lost, H's to them delivered",
		[]string{"cut s1 H mgmt one-way", "cut s2 H mgmt one-way", "cut s3 H mgmt one-way"}, "1m",
		[]string{"restore s1 H mgmt one-way", "restore s2 H mgmt one-way", "restore s3 H mgmt one-way"}, nil},
	{"mgmt-partition", "management partition both ways: H isolated from every other machine", []string{"isolate H mgmt"}, "1m", []string{"rejoin H mgmt"}, nil},
	{"business-down", "H's business link down (the business probe turns it error)", []string{"link-down H biz"}, "1m", []string{"link-up H biz"}, nil},
	{"libvirtd-down", "H's libvirtd down", []string{"libvirtd-down H"}, "1m", []string{"libvirtd-up H"}, nil},
	{"qemu-crash", "V's qemu crashes (wherever it runs)", []string{"qemu-crash V"}, "", nil, nil},
	{"disk-fault", "H's storage probe fails (a disk fault) for a minute", []string{"disk-fault H on"}, "1m", []string{"disk-fault H off"}, nil},
	{"leader-crash", "the leader crashes (restarted only by the final heal)", []string{"leader-crash"}, "", nil, nil},
	{"server-restart", "the leader s1 crashes and restarts 20 s later (rebuilt from its snapshot and log)", []string{"server-crash s1"}, "20s", []string{"server-restart s1"}, nil},
	{"message-loss", "half the management requests lost for a minute", []string{"net-faults mgmt loss=0.5"}, "1m", []string{"net-faults mgmt loss=0"}, nil},
	{"message-dup", "half the management requests duplicated for a minute", []string{"net-faults mgmt dup=0.5"}, "1m", []string{"net-faults mgmt dup=0"}, nil},
	{"message-delay", "half the management requests delayed (up to 20 s) for a minute", []string{"net-faults mgmt delay=0.5 max-delay=20s"}, "1m", []string{"net-faults mgmt delay=0"}, nil},
	{"clock-forward", "H's clock jumps 10 minutes forward (the agent's clock)", []string{"host-clock-jump H 10m"}, "1m", []string{"host-clock-jump H -10m"}, nil},
	{"clock-backward", "H's clock jumps 10 minutes backward (the agent's clock)", []string{"host-clock-jump H -10m"}, "1m", []string{"host-clock-jump H 10m"}, nil},
}

func (f genFault) lines(host, vm string) (do, undo []string) {
	r := strings.NewReplacer("H", host, "V", vm)
	for _, c := range f.do {
		do = append(do, r.Replace(c))
	}
	if f.hold != "" {
		undo = append(undo, "wait "+f.hold)
	}
	for _, c := range append(append([]string(nil), f.undo...), f.recover...) {
		undo = append(undo, r.Replace(c))
	}
	return do, undo
}

// opFaultScenarios: every operation, interrupted by every fault in the
// instant after the operator's request was answered (before any agent
// acted on it).
func opFaultScenarios() []genScenario {
	var out []genScenario
	for _, op := range genOps {
		for _, f := range genFaults {
			do, undo := f.lines(op.host, op.vm)
			sc := genScenario{name: "op-" + op.name + "--" + f.name, header: []string{
				"Generated (gen_test.go): an HA operation interrupted by a fault.",
				"Operation: " + op.what + ".",
				"Fault, in the same instant, right after the answer: " + strings.NewReplacer("H", op.host, "V", op.vm).Replace(f.what) + ".",
			}}
			sc.lines = append(sc.lines, genBase...)
			sc.lines = append(sc.lines, op.setup...)
			sc.lines = append(sc.lines, op.op...)
			sc.lines = append(sc.lines, do...)
			sc.lines = append(sc.lines, undo...)
			sc.lines = append(sc.lines, "wait 30s")
			sc.lines = append(sc.lines, op.after...)
			sc.lines = append(sc.lines, "wait 1m")
			out = append(out, sc)
		}
	}
	return out
}

// genTask is a task whose steps a leader change may hit, with the offsets
// (after the request) of its steps in the simulator's timing: the
// task is pending (before start), the work was ordered but no result is
// in (in flight), the result is in but the task is not finished (after
// result), the task is done.
type genTask struct {
	name, what string
	setup, op  []string
	steps      [4]string
	after      []string
}

var genTasks = []genTask{
	{name: "migrate", what: "live migration vm1 h1 → h2", op: []string{"migrate vm1 h2"},
		steps: [4]string{"0s", "7ms", "17ms", "1s"}},
	{name: "evacuate", what: "evacuation of h1", op: []string{"evacuate h1"},
		steps: [4]string{"0s", "7ms", "12ms", "1s"}, after: []string{"enable h1"}},
	{name: "drain", what: "drain of h1, then its rebuild", op: []string{"drain h1"},
		steps: [4]string{"0s", "10ms", "32ms", "1s"}, after: []string{"rebuild h1", "wait 30s", "enable h1"}},
}

var genSteps = [4]string{"before-start", "in-flight", "after-result", "after-done"}

func leaderScenarios() []genScenario {
	var out []genScenario
	for _, tk := range genTasks {
		for i, step := range genSteps {
			for _, how := range []string{"crash", "transfer"} {
				sc := genScenario{name: "leader-" + tk.name + "-" + step + "-" + how, header: []string{
					"Generated (gen_test.go): a leader change at one step of a task.",
					"Task: " + tk.name + " (" + tk.what + "); the leader " + map[string]string{
						"crash":    "crashes (a new one is elected after the election timeout; the old one restarts with the final heal)",
						"transfer": "hands over to another server (leader-transfer)"}[how] + ",",
					"at step " + step + " (" + tk.steps[i] + " after the request).",
				}}
				sc.lines = append(sc.lines, genBase...)
				sc.lines = append(sc.lines, tk.setup...)
				sc.lines = append(sc.lines, tk.op...)
				if tk.steps[i] != "0s" {
					sc.lines = append(sc.lines, "wait "+tk.steps[i])
				}
				sc.lines = append(sc.lines, "leader-"+how, "wait 1m")
				sc.lines = append(sc.lines, tk.after...)
				sc.lines = append(sc.lines, "wait 1m")
				out = append(out, sc)
			}
		}
	}
	return out
}

// labScenarios are variants of the lab's six failure scenarios
// (integration/scenarios_test.go) on the lab's layout: six VMs, two per
// host.
func labScenarios() []genScenario {
	six := []string{"create vm1", "create vm2", "create vm3", "create vm4", "create vm5", "create vm6", "wait 30s"}
	type lab struct {
		name, what string
		lines      []string
	}
	labs := []lab{
		{"1a-node-down-and-back", "lab 1a: power loss → unreachable + alarm; power back → the agent starts its VMs again",
			[]string{"power-off h1", "wait 2m", "power-on h1", "wait 1m"}},
		{"1b-node-down-drain-rebuild", "lab 1b: power loss → drain + rebuild --confirm-fenced (true) → VMs elsewhere; node back → nothing restarted there",
			[]string{"power-off h1", "wait 1m", "drain h1", "wait 5s", "rebuild h1 confirm-fenced", "wait 1m", "power-on h1", "wait 1m", "enable h1"}},
		{"2-agent-crash", "lab 2: kill -9 of the agent, restarted as systemd would: no qemu changes",
			[]string{"agent-crash h1", "wait 5s", "agent-restart h1", "wait 1m"}},
		{"3-disk-fault-evacuate", "lab 3: the storage path fails → error + alarm; evacuate → every VM live-migrated away",
			[]string{"disk-fault h1 on", "wait 1m", "evacuate h1", "wait 1m", "disk-fault h1 off", "wait 30s", "enable h1"}},
		{"4-management-down-local-migrate", "lab 4: management link cut → unreachable, VMs keep running; `chime agent migrate` over the business network; the source converges when its link returns",
			[]string{"link-down h1 mgmt", "wait 1m", "agent-migrate h1 vm1 h2", "agent-migrate h1 vm4 h3", "wait 1m", "link-up h1 mgmt", "wait 1m"}},
		{"5-business-down-evacuate", "lab 5: business link cut → error within a probe interval; evacuate over management",
			[]string{"link-down h1 biz", "wait 45s", "evacuate h1", "wait 1m", "link-up h1 biz", "wait 30s", "enable h1"}},
		{"6-isolated-node", "lab 6: both links cut → local drain on the node, drain + rebuild --confirm-fenced on the servers; links back → nothing runs on the drained node; node enable releases the local drain",
			[]string{"isolate h1 mgmt", "isolate h1 biz", "agent-drain h1", "wait 1m", "drain h1", "wait 5s", "rebuild h1 confirm-fenced", "wait 1m",
				"rejoin h1 mgmt", "rejoin h1 biz", "wait 1m", "enable h1"}},
	}
	type variant struct {
		name, what string
		edit       func(lines []string) []string
	}
	variants := []variant{
		{"", "", func(l []string) []string { return l }},
		{"leader-crash", "with the leader crashing in the middle of the recovery", func(l []string) []string {
			mid := len(l) / 2
			return append(append(append([]string(nil), l[:mid]...), "leader-crash"), l[mid:]...)
		}},
		{"h2-host", "on h2 instead of h1", func(l []string) []string {
			r := strings.NewReplacer("h1", "h2", "vm1 h2", "vm2 h1", "vm4 h3", "vm5 h3")
			out := make([]string, len(l))
			for i, s := range l {
				out[i] = r.Replace(s)
			}
			return out
		}},
	}
	var out []genScenario
	for _, lb := range labs {
		for _, v := range variants {
			name := "lab-" + lb.name
			what := lb.what + "."
			if v.name != "" {
				name += "--" + v.name
				what = lb.what + ", " + v.what + "."
			}
			sc := genScenario{name: name, header: []string{
				"Generated (gen_test.go): a variant of the lab's failure scenarios on the lab's layout (six VMs, two per host).",
				what,
			}}
			sc.lines = append(append(sc.lines, six...), v.edit(lb.lines)...)
			sc.lines = append(sc.lines, "wait 1m")
			out = append(out, sc)
		}
	}
	return out
}

// generatedScenarios is the whole generated matrix.
func generatedScenarios() []genScenario {
	var out []genScenario
	out = append(out, opFaultScenarios()...)
	out = append(out, leaderScenarios()...)
	out = append(out, labScenarios()...)
	return out
}

// keptMarks returns the known-failure mark of an existing cmds file, with
// the comment lines right above it.
func keptMarks(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out, notes []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "# known-failure"):
			notes = append(notes, l)
		case strings.HasPrefix(l, "known-failure:"):
			out = append(append(out, notes...), l)
			notes = nil
		}
	}
	return out
}

func (g genScenario) render(marks []string) string {
	var b strings.Builder
	for _, h := range g.header {
		b.WriteString("# " + h + "\n")
	}
	for _, m := range marks {
		b.WriteString(m + "\n")
	}
	for _, l := range g.lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// TestGenerate writes the generated scenarios (-sim.gen); without the
// flag it checks that the checked-in cmds files are what the generator
// makes (apart from the kept known-failure marks).
func TestGenerate(t *testing.T) {
	seen := map[string]bool{}
	for _, g := range generatedScenarios() {
		if seen[g.name] {
			t.Fatalf("generated scenario %s twice", g.name)
		}
		seen[g.name] = true
		dir := filepath.Join(scenarioDir, g.name)
		path := filepath.Join(dir, "cmds")
		text := g.render(keptMarks(path))
		if _, err := ParseSchedule(strings.NewReader(text)); err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		if *flagGen {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		have, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v (run with -sim.gen to write it)", g.name, err)
			continue
		}
		if string(have) != text {
			t.Errorf("%s/cmds is not what the generator makes (run with -sim.gen):\n%s", g.name, lineDiff(text, string(have)))
		}
	}
	t.Logf("%d generated scenarios", len(seen))
	if *flagGen {
		fmt.Printf("wrote %d generated scenarios under %s\n", len(seen), scenarioDir)
	}
}
