package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/server/endpoint"
)

// Schedules: what happens to a run and when. A scenario file and a random
// seed both become a Schedule: a list of commands, each at an offset from
// the end of the boot phase. The runner schedules each as an event, then
// heals every fault, lets the quiet period pass and checks the final
// invariants.
//
// The command language (one command per line in a scenario's cmds file;
// "#" starts a comment; times are Go durations):
//
//	wait D                      let D of simulated time pass (scenario files only)
//	create VM [stopped]         operator: create a VM (1 vCPU, 512 MiB)
//	start VM | stop VM | delete VM
//	restart VM                  operator: `chime vm restart` (stop, wait for the agent's report, start)
//	migrate VM [HOST]           operator: live-migrate (to HOST, or where placement says)
//	evacuate HOST | drain HOST | enable HOST | disable HOST | remove-node HOST
//	agent-drain HOST            on the node: `chime agent drain`
//	agent-migrate HOST|@ VM DEST [mgmt|biz]   on the node (@: where VM runs): `chime agent migrate --uuid VM
//	                            --dest <DEST's address> --interface mgmt0|biz0` (default biz)
//	disk-fault HOST on|off      the agent's storage probe fails (a disk fault)
//	rebuild HOST [confirm-fenced|confirm-if-fenced]   recreate a drained node's VMs
//	                            elsewhere; confirm-fenced while HOST runs a chime VM
//	                            is a recorded lie; confirm-if-fenced confirms only
//	                            when it runs none (a truthful operator)
//	reset-secret HOST           `chime node reset-secret`: the next registration as
//	                            the node sets a new secret (its agent lost its state);
//	                            tried again every 30 s until acknowledged (10 tries)
//	power-off HOST [lose-disk]  the host loses power (local disk kept or lost)
//	power-on HOST
//	agent-crash HOST [lose-state]   kill the agent (its state dir kept or lost)
//	agent-restart HOST
//	clone-host-uuid FROM TO     TO's libvirtd gets FROM's host UUID (a cloned host image,
//	                            a placeholder SMBIOS UUID): TO's next agent with an empty
//	                            state dir claims FROM's node
//	freeze HOST | thaw HOST     SIGSTOP / SIGCONT the agent
//	libvirtd-down HOST | libvirtd-up HOST
//	qemu-crash VM               the VM's qemu crashes wherever it runs
//	link-down M NET | link-up M NET     a machine's link (NET: mgmt or biz)
//	cut A B NET [one-way]       partition A and B (A→B only with one-way)
//	restore A B NET [one-way]
//	isolate HOST [NET]          cut HOST from every other machine (default mgmt)
//	rejoin HOST [NET]
//	net-faults NET loss=P answer-loss=P delay=P dup=P [max-delay=D]
//	                            every path of NET that has no faults of its own
//	path-faults A B NET loss=P ...  the path A→B ("*" for B: every other machine)
//	request-faults KIND loss=P ...  every request of one kind (register, desired,
//	                            heartbeat, migrated, ping, adopt, forward), any path
//	hv-fault HOST OP on|off|after=N   HOST's libvirt fails every OP call (list, define,
//	                            start, shutdown, destroy, undefine, migrate), or
//	                            every one after the next N
//	server-crash S | server-restart S | leader-crash | leader-transfer
//	snapshot S                  S takes a snapshot of its state
//	clock-jump S D              S's wall clock jumps by D (may be negative)
//	host-clock-jump HOST D      HOST's wall clock (the agent's clock) jumps by D
//	migration-outcome VM OUTCOME    the VM's next live migration: fails-before,
//	                            fails-during or reply-lost
//	heal                        undo every fault (the runner heals at the end anyway)
//	create-ha, fence-fails, node-fence   automatic HA (ha.go, with the "ha" header)
//	on-propose TYPE N D [CMD...]    the Nth next proposal of command type TYPE (*: any)
//	                            by the servers' own code pauses before it commits:
//	                            CMD runs, D passes, then it goes on (interleave.go)
//
// Scenario header lines (before any command): "seed N", "hosts N",
// "quiet D" (the quiet period), "known-failure: N" (root cause N of
// issue 10: the scenario shows it, and reports instead of failing).

// Item is one scheduled command.
type Item struct {
	At  time.Duration // after the boot phase
	Cmd []string
}

func (it Item) String() string {
	return fmt.Sprintf("at %s %s", fmtDur(it.At), strings.Join(it.Cmd, " "))
}

// Schedule is what a run does.
type Schedule struct {
	Seed         uint64
	Hosts        int
	Quiet        time.Duration // after the heal; default 5 min
	KnownFailure int           // root cause number (0: none)
	// HATolerate turns admission control on (header `ha-tolerate N`),
	// with N tolerated failures. 0 (every scenario without the header):
	// off. The mass-failure brake runs either way.
	HATolerate int
	Items      []Item
	// Length is how long the schedule runs before the heal (at least until
	// its last item); a scenario's trailing wait sets it.
	Length time.Duration
	// HA are the automatic-HA settings (header "ha ...", ha.go); nil: none.
	HA *HAOptions
}

// DefaultQuiet is the quiet period after the final heal.
const DefaultQuiet = 5 * time.Minute

// BootTime is the boot phase before a schedule's offsets start: the first
// election and the agents' registrations.
const BootTime = 30 * time.Second

// End is when the schedule ends: its Length, or its last item if later.
func (sc *Schedule) End() time.Duration {
	end := sc.Length
	for _, it := range sc.Items {
		end = max(end, it.At)
	}
	return end
}

// String renders the schedule in the scenario language (replayable).
func (sc *Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d\n", sc.Seed)
	if sc.Hosts != 0 {
		fmt.Fprintf(&b, "hosts %d\n", sc.Hosts)
	}
	if sc.Quiet != 0 {
		fmt.Fprintf(&b, "quiet %s\n", fmtDur(sc.Quiet))
	}
	if sc.KnownFailure != 0 {
		fmt.Fprintf(&b, "known-failure: %d\n", sc.KnownFailure)
	}
	if sc.HATolerate != 0 {
		fmt.Fprintf(&b, "ha-tolerate %d\n", sc.HATolerate)
	}
	if sc.HA != nil {
		fmt.Fprintf(&b, "%s\n", sc.HA)
	}
	var at time.Duration
	for _, it := range sc.Items {
		if it.At > at {
			fmt.Fprintf(&b, "wait %s\n", fmtDur(it.At-at))
			at = it.At
		}
		fmt.Fprintf(&b, "%s\n", strings.Join(it.Cmd, " "))
	}
	if end := sc.End(); end > at {
		fmt.Fprintf(&b, "wait %s\n", fmtDur(end-at))
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	if strings.HasSuffix(s, "h") || strings.HasSuffix(s, "m") {
		return s
	}
	if s == "" {
		return "0s"
	}
	return d.String()
}

// ParseSchedule reads the scenario language.
func ParseSchedule(r io.Reader) (*Schedule, error) {
	sc := &Schedule{Seed: 1}
	var at time.Duration
	sr := bufio.NewScanner(r)
	line := 0
	for sr.Scan() {
		line++
		text := sr.Text()
		if i := strings.Index(text, "#"); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		bad := func(format string, args ...any) (*Schedule, error) {
			return nil, fmt.Errorf("line %d: %s: %s", line, strings.Join(f, " "), fmt.Sprintf(format, args...))
		}
		switch f[0] {
		case "seed", "hosts", "known-failure:", "ha-tolerate":
			if len(f) != 2 {
				return bad("one number expected")
			}
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return bad("%v", err)
			}
			switch f[0] {
			case "seed":
				sc.Seed = n
			case "hosts":
				sc.Hosts = int(n)
			case "ha-tolerate":
				sc.HATolerate = int(n)
			default:
				sc.KnownFailure = int(n)
			}
			continue
		case "ha":
			o, err := parseHAHeader(f)
			if err != nil {
				return bad("%v", err)
			}
			sc.HA = o
			continue
		case "quiet", "wait":
			if len(f) != 2 {
				return bad("one duration expected")
			}
			d, err := time.ParseDuration(f[1])
			if err != nil || d < 0 {
				return bad("bad duration")
			}
			if f[0] == "quiet" {
				sc.Quiet = d
			} else {
				at += d
			}
			continue
		}
		if err := checkCmd(f); err != nil {
			return bad("%v", err)
		}
		sc.Items = append(sc.Items, Item{At: at, Cmd: f})
	}
	if err := sr.Err(); err != nil {
		return nil, err
	}
	sc.Length = at
	return sc, nil
}

// resetSecretTries bounds the operator's attempts at `chime node
// reset-secret` (resetSecret).
const resetSecretTries = 10

// resetSecret is the operator following the runbook for a lost state dir:
// `chime node reset-secret NODE`, tried again every 30 s while no server
// acknowledges it (no leader, a partition), at most tries times.
func (s *Sim) resetSecret(node string, tries int) {
	if err := s.Ops.NodeAction(node, endpoint.NodeResetSecret, false); err == nil || tries <= 1 {
		return
	}
	s.E.After(30*time.Second, "operator retries reset-secret "+node, func() { s.resetSecret(node, tries-1) })
}

// cmdArity is each command's number of arguments: minimum and maximum.
var cmdArity = map[string][2]int{
	"create": {1, 2}, "start": {1, 1}, "stop": {1, 1}, "delete": {1, 1}, "restart": {1, 1},
	"migrate": {1, 2}, "evacuate": {1, 1}, "drain": {1, 1}, "rebuild": {1, 2}, "enable": {1, 1}, "disable": {1, 1},
	"remove-node": {1, 1}, "reset-secret": {1, 1},
	"agent-drain": {1, 1}, "agent-migrate": {3, 4}, "disk-fault": {2, 2},
	"hv-fault": {3, 3}, "path-faults": {3, 8}, "request-faults": {2, 6},
	"power-off": {1, 2}, "power-on": {1, 1},
	"agent-crash": {1, 2}, "agent-restart": {1, 1}, "clone-host-uuid": {2, 2},
	"freeze": {1, 1}, "thaw": {1, 1},
	"libvirtd-down": {1, 1}, "libvirtd-up": {1, 1},
	"qemu-crash": {1, 1},
	"link-down":  {2, 2}, "link-up": {2, 2},
	"cut": {3, 4}, "restore": {3, 4},
	"isolate": {1, 2}, "rejoin": {1, 2},
	"net-faults":   {2, 6},
	"server-crash": {1, 1}, "server-restart": {1, 1}, "leader-crash": {0, 0}, "leader-transfer": {0, 0},
	"snapshot": {1, 1}, "clock-jump": {2, 2}, "host-clock-jump": {2, 2},
	"migration-outcome": {2, 2},
	"heal":              {0, 0},
	"create-ha-mib":     {2, 2}, "ha-arm": {0, 0}, "ha-disarm": {0, 0},
}

func checkCmd(f []string) error {
	if f[0] == "on-propose" {
		_, err := parseOnPropose(f)
		return err
	}
	a, ok := cmdArity[f[0]]
	if !ok {
		known := make([]string, 0, len(cmdArity))
		for k := range cmdArity {
			known = append(known, k)
		}
		sort.Strings(known)
		return fmt.Errorf("unknown command (known: %s)", strings.Join(known, ", "))
	}
	if n := len(f) - 1; n < a[0] || n > a[1] {
		return fmt.Errorf("%d to %d arguments expected", a[0], a[1])
	}
	return nil
}

func parseNet(s string) (Net, error) {
	switch s {
	case "mgmt":
		return Mgmt, nil
	case "biz":
		return Business, nil
	}
	return 0, fmt.Errorf("network %q: mgmt or biz", s)
}

// Exec carries out one command now. An operator request that the servers
// refuse is not an error (it is recorded, with its answer); a command that
// names nothing known is.
func (s *Sim) Exec(f []string) error {
	if err := checkCmd(f); err != nil {
		return err
	}
	s.E.trace.Addf("cmd", "%s", strings.Join(f, " "))
	if s.waitsForResume(f) {
		return nil
	}
	arg := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	host := func() (*Host, error) {
		if h := s.Host(f[1]); h != nil {
			return h, nil
		}
		return nil, fmt.Errorf("%s: no host %q", f[0], f[1])
	}
	server := func() (*Server, error) {
		if srv := s.Cluster.Server(f[1]); srv != nil {
			return srv, nil
		}
		return nil, fmt.Errorf("%s: no server %q", f[0], f[1])
	}
	machine := func(name string) error {
		if s.Host(name) == nil && s.Cluster.Server(name) == nil && name != opMachine && name != gatewayMachine {
			return fmt.Errorf("%s: no machine %q", f[0], name)
		}
		return nil
	}
	if ok, err := s.execHA(f); ok {
		return err
	}
	switch f[0] {
	case "on-propose":
		return s.armPause(f)
	case "create":
		_ = s.Ops.Create(f[1], 1, 512, arg(2) == "stopped")
	case "create-ha-mib": // create-ha-mib NAME MEMORY_MIB: a running ha VM of 1 vCPU
		mem, err := strconv.Atoi(arg(2))
		if err != nil || mem <= 0 {
			return fmt.Errorf("create-ha-mib: memory in MiB expected, got %q", arg(2))
		}
		_ = s.Ops.CreateHAOfSize(f[1], 1, mem)
	case "ha-arm", "ha-disarm":
		_ = s.Ops.SetHAArmed(f[0] == "ha-arm")
	case "start", "stop":
		_ = s.Ops.SetDesired(f[1], f[0] == "start")
	case "delete":
		_ = s.Ops.Delete(f[1])
	case "restart":
		s.Ops.Restart(f[1])
	case "migrate":
		_ = s.Ops.Migrate(f[1], arg(2))
	case "evacuate", "drain", "enable", "disable":
		_ = s.Ops.NodeAction(f[1], endpoint.NodeOp(f[0]), false)
	case "reset-secret":
		s.resetSecret(f[1], resetSecretTries)
	case "rebuild":
		confirm := false
		switch arg(2) {
		case "":
		case "confirm-fenced":
			confirm = true
		case "confirm-if-fenced":
			// A truthful operator: confirms only what the console shows.
			confirm = true
			if h := s.Host(f[1]); h != nil {
				for _, q := range h.HV.Running() {
					confirm = confirm && q.Foreign
				}
			}
		default:
			return fmt.Errorf("rebuild: %q: confirm-fenced, confirm-if-fenced or nothing", arg(2))
		}
		_ = s.Ops.NodeAction(f[1], endpoint.NodeRebuild, confirm)
	case "remove-node":
		_ = s.Ops.RemoveNode(f[1])
	case "agent-drain":
		h, err := host()
		if err != nil {
			return err
		}
		s.Ops.recordLocal("agent-drain", h.Name, h.LocalDrain())
	case "agent-migrate":
		h, err := host()
		if f[1] == "@" {
			// Wherever the VM runs now (a random schedule cannot know).
			h, err = s.hostRunning(f[2]), nil
			if h == nil {
				s.Ops.recordLocal("agent-migrate "+f[2], "@", fmt.Errorf("vm %s runs nowhere", f[2]))
				break
			}
		}
		if err != nil {
			return err
		}
		dest := s.Host(f[3])
		if dest == nil {
			return fmt.Errorf("agent-migrate: no host %q", f[3])
		}
		k := Business
		if arg(4) != "" {
			if k, err = parseNet(arg(4)); err != nil {
				return err
			}
		}
		id := s.vmID(f[2])
		if id == "" {
			s.Ops.recordLocal("agent-migrate "+f[2], h.Name, fmt.Errorf("no acknowledged vm %q", f[2]))
			break
		}
		res, err := h.LocalMigrate(id, dest, k)
		for _, r := range res {
			s.E.trace.Addf("op", "%s agent migrate %s to %s: ok=%v %s", h.Name, f[2], dest.Name, r.OK, r.Error)
			if r.OK {
				s.localMoves = append(s.localMoves, localMove{vmID: id, to: dest.Name, at: s.E.Now()})
			} else if err == nil {
				err = errors.New(r.Error)
			}
		}
		s.Ops.recordLocal("agent-migrate "+f[2]+" to "+dest.Name, h.Name, err)
	case "disk-fault":
		h, err := host()
		if err != nil {
			return err
		}
		if f[2] != "on" && f[2] != "off" {
			return fmt.Errorf("disk-fault: on or off")
		}
		h.diskFault = f[2] == "on"
		s.E.trace.Addf("fault", "%s disk fault %s", h.Name, f[2])
	case "clone-host-uuid":
		from, to := s.Host(f[1]), s.Host(f[2])
		if from == nil || to == nil {
			return fmt.Errorf("clone-host-uuid: unknown host in %q", strings.Join(f[1:], " "))
		}
		u, err := from.HV.HostUUID(context.Background())
		if err != nil {
			return fmt.Errorf("clone-host-uuid: %w", err)
		}
		to.HV.SetHostUUID(u)
		s.E.trace.Addf("fault", "%s's libvirt host UUID set to %s's (%s)", to.Name, from.Name, u)
	case "power-off", "power-on", "agent-crash", "agent-restart", "freeze", "thaw", "libvirtd-down", "libvirtd-up":
		h, err := host()
		if err != nil {
			return err
		}
		switch f[0] {
		case "power-off":
			h.PowerOff(arg(2) == "lose-disk")
		case "power-on":
			h.PowerOn()
			s.Ops.correctLies(h.Name)
		case "agent-crash":
			h.CrashAgent(arg(2) == "lose-state")
		case "agent-restart":
			h.RestartAgent()
		case "freeze":
			h.Freeze()
		case "thaw":
			h.Thaw()
		case "libvirtd-down":
			s.E.trace.Addf("fault", "%s libvirtd down", h.Name)
			h.HV.StopLibvirtd()
		case "libvirtd-up":
			s.E.trace.Addf("fault", "%s libvirtd up", h.Name)
			h.HV.StartLibvirtd()
		}
	case "qemu-crash":
		id := s.vmID(f[1])
		crashed := false
		for _, h := range s.Hosts {
			if id != "" && h.HV.Crash(id) {
				crashed = true
				s.E.trace.Addf("fault", "vm %s: qemu crashed on %s", f[1], h.Name)
			}
		}
		if !crashed {
			s.E.trace.Addf("fault", "vm %s: no qemu to crash", f[1])
		}
	case "link-down", "link-up":
		if err := machine(f[1]); err != nil {
			return err
		}
		k, err := parseNet(f[2])
		if err != nil {
			return err
		}
		s.Net.SetLink(f[1], k, f[0] == "link-up")
		if f[0] == "link-up" {
			s.Ops.correctLies(f[1])
		}
	case "cut", "restore":
		for _, m := range f[1:3] {
			if err := machine(m); err != nil {
				return err
			}
		}
		k, err := parseNet(f[3])
		if err != nil {
			return err
		}
		oneWay := arg(4) == "one-way"
		if f[0] == "cut" {
			s.Net.Cut(f[1], f[2], k)
			if !oneWay {
				s.Net.Cut(f[2], f[1], k)
			}
		} else {
			s.Net.Restore(f[1], f[2], k)
			if !oneWay {
				s.Net.Restore(f[2], f[1], k)
			}
			s.Ops.correctLies(f[1])
			s.Ops.correctLies(f[2])
		}
	case "isolate", "rejoin":
		h, err := host()
		if err != nil {
			return err
		}
		k := Mgmt
		if arg(2) != "" {
			if k, err = parseNet(arg(2)); err != nil {
				return err
			}
		}
		others := s.machines()
		if k == Business {
			others = append(others, gatewayMachine)
		}
		for _, m := range others {
			if m == h.Name {
				continue
			}
			if f[0] == "isolate" {
				s.Net.Cut(h.Name, m, k)
				s.Net.Cut(m, h.Name, k)
			} else {
				s.Net.Restore(h.Name, m, k)
				s.Net.Restore(m, h.Name, k)
			}
		}
		if f[0] == "rejoin" {
			s.Ops.correctLies(h.Name)
		}
	case "request-faults":
		pf, err := parsePathFaults(f[2:])
		if err != nil {
			return fmt.Errorf("request-faults: %w", err)
		}
		s.Net.SetRequestFaults(f[1], pf)
	case "net-faults", "path-faults":
		rest, a, b := f[1:], "", ""
		if f[0] == "path-faults" {
			a, b = f[1], f[2]
			if err := machine(a); err != nil {
				return err
			}
			if err := machine(b); err != nil && b != "*" {
				return err
			}
			rest = f[3:]
		}
		k, err := parseNet(rest[0])
		if err != nil {
			return err
		}
		pf, err := parsePathFaults(rest[1:])
		if err != nil {
			return fmt.Errorf("%s: %w", f[0], err)
		}
		switch {
		case f[0] == "net-faults":
			s.Net.SetDefaultFaults(k, pf)
		case b == "*":
			for _, m := range s.machines() {
				if m != a {
					s.Net.SetFaults(a, m, k, pf)
				}
			}
		default:
			s.Net.SetFaults(a, b, k, pf)
		}
	case "hv-fault":
		h, err := host()
		if err != nil {
			return err
		}
		pass := 0
		switch {
		case f[3] == "on", f[3] == "off":
		case strings.HasPrefix(f[3], "after="):
			n, err := strconv.Atoi(strings.TrimPrefix(f[3], "after="))
			if err != nil || n < 0 {
				return fmt.Errorf("hv-fault: %q: after=N with N >= 0", f[3])
			}
			pass = n
		default:
			return fmt.Errorf("hv-fault: on, off or after=N")
		}
		h.setHVFault(Op(f[2]), f[3] != "off", pass)
	case "server-crash", "server-restart", "snapshot":
		srv, err := server()
		if err != nil {
			return err
		}
		switch f[0] {
		case "server-crash":
			srv.Crash()
		case "server-restart":
			if err := srv.Restart(); err != nil {
				s.E.trace.Addf("server", "%v", err)
			}
		default:
			srv.Snapshot()
		}
	case "leader-crash":
		if l := s.Cluster.leader; l != nil {
			l.Crash()
		}
	case "leader-transfer":
		s.Cluster.TransferLeadership()
	case "clock-jump":
		srv, err := server()
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(f[2])
		if err != nil {
			return fmt.Errorf("clock-jump: %v", err)
		}
		srv.skew += d
		s.E.trace.Addf("fault", "%s clock jumps %s (skew %s)", srv.Name, d, srv.skew)
	case "host-clock-jump":
		h, err := host()
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(f[2])
		if err != nil {
			return fmt.Errorf("host-clock-jump: %v", err)
		}
		h.clockSkew += d
		s.E.trace.Addf("fault", "%s clock jumps %s (skew %s)", h.Name, d, h.clockSkew)
	case "migration-outcome":
		id := s.vmID(f[1])
		if id == "" {
			return fmt.Errorf("migration-outcome: no acknowledged vm %q", f[1])
		}
		var out MigrationOutcome
		switch f[2] {
		case "fails-before":
			out = MigrationFailsBefore
		case "fails-during":
			out = MigrationFailsDuring
		case "reply-lost":
			out = MigrationReplyLost
		default:
			return fmt.Errorf("migration-outcome: %q: fails-before, fails-during or reply-lost", f[2])
		}
		s.nextMigration[id] = out
	case "heal":
		s.Heal()
	}
	return nil
}

// hostRunning is the host whose hypervisor runs the named VM (the first
// by name when it runs twice), or nil.
func (s *Sim) hostRunning(vm string) *Host {
	id := s.vmID(vm)
	for _, h := range s.Hosts {
		for _, q := range h.HV.Running() {
			if id != "" && q.UUID == id {
				return h
			}
		}
	}
	return nil
}

// machines lists every machine on the management network.
func (s *Sim) machines() []string {
	out := []string{opMachine}
	for _, srv := range s.Cluster.Servers {
		out = append(out, srv.Name)
	}
	for _, h := range s.Hosts {
		out = append(out, h.Name)
	}
	return out
}

// vmID is the id of an acknowledged create of the named VM ("" if none).
func (s *Sim) vmID(name string) string {
	for _, w := range s.Ops.Writes {
		if w.Op == "create" && w.VM == name && w.VMID != "" {
			return w.VMID
		}
	}
	if l := s.Cluster.leader; l != nil {
		if vm, err := l.FSM.ResolveVM(name); err == nil {
			return vm.ID
		}
	}
	return ""
}

// Heal undoes every fault: the network heals, hosts get power, agents
// start and thaw, libvirtd starts, servers restart, clocks are set right.
func (s *Sim) Heal() {
	s.E.trace.Add("fault", "heal everything")
	s.Net.HealAll()
	for _, h := range s.Hosts {
		wasPowered := h.powered
		h.PowerOn() // a host without power boots, its agent starts after bootTime
		h.HV.StartLibvirtd()
		h.Thaw()
		if wasPowered && h.proc == nil {
			h.RestartAgent()
		}
		s.Ops.correctLies(h.Name)
	}
	for _, srv := range s.Cluster.Servers {
		srv.skew = 0
		if !srv.up {
			if err := srv.Restart(); err != nil {
				s.E.trace.Addf("server", "%v", err)
			}
		}
	}
	clear(s.nextMigration)
	s.migrationFaults = 0
	for _, h := range s.Hosts {
		h.diskFault = false
		h.clockSkew = 0
		clear(h.hvFaults)
	}
}

// parsePathFaults reads key=value faults (loss, answer-loss, delay, dup:
// probabilities; max-delay: a duration).
func parsePathFaults(kvs []string) (PathFaults, error) {
	var pf PathFaults
	for _, kv := range kvs {
		key, val, ok := strings.Cut(kv, "=")
		if !ok {
			return pf, fmt.Errorf("%q is not key=value", kv)
		}
		if key == "max-delay" {
			d, err := time.ParseDuration(val)
			if err != nil {
				return pf, err
			}
			pf.MaxDelay = d
			continue
		}
		p, err := strconv.ParseFloat(val, 64)
		if err != nil || p < 0 || p > 1 {
			return pf, fmt.Errorf("%s: a probability expected", kv)
		}
		switch key {
		case "loss":
			pf.Loss = p
		case "answer-loss":
			pf.AnswerLoss = p
		case "delay":
			pf.Delay = p
		case "dup":
			pf.Dup = p
		default:
			return pf, fmt.Errorf("unknown fault %q", key)
		}
	}
	return pf, nil
}
