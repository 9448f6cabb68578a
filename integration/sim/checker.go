package sim

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/hypervisor"
)

// The invariant checker. It runs after every event and reads the world —
// the simulated hypervisors' qemu processes, the hosts' power, the
// operator's acknowledged writes — never chime's own view of it, except
// where an invariant is about that view (the leader's node states, the
// servers' agreement).

// Invariant names one checked property.
type Invariant string

// The invariants.
const (
	// InvUnique (1): no VM has a live qemu on two hosts.
	InvUnique Invariant = "1-unique"
	// InvAcked (2): no acknowledged write is lost.
	InvAcked Invariant = "2-acked"
	// InvLiveness (3): after the faults stop and a quiet period, every VM
	// desired running whose placement is on a healthy enabled node runs.
	InvLiveness Invariant = "3-liveness"
	// InvNormalClean (4): a node is never normal (in the leader's state)
	// while its host runs a copy of a VM placed elsewhere or at an older
	// generation (a live migration in flight to it excepted).
	InvNormalClean Invariant = "4-normal-clean"
	// InvConverge (5): after the quiet period the servers' states are equal
	// and the observations match the hypervisors.
	InvConverge Invariant = "5-converge"
	// InvFSMHalted: a server's state machine halted (a replica fault).
	InvFSMHalted Invariant = "fsm-halted"
)

// liePardon is how long after a heal corrected a --confirm-fenced lie the
// liar's VMs are still exempt from invariant 1: the time the agent needs
// to hear the new placements and destroy its copies.
const liePardon = time.Minute

// Violation is one invariant found broken.
type Violation struct {
	Inv Invariant
	At  time.Duration // since Epoch
	Msg string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s at %ss: %s", v.Inv, strings.TrimSpace(stamp(v.At)), v.Msg)
}

// Checker holds the violations of one run.
type Checker struct {
	s          *Sim
	Violations []Violation
	active     map[string]bool // keys of the step invariants broken at the last check (reported once per stretch)
	seen       map[string]bool // every key reported
	cache      leaderView
}

func newChecker(s *Sim) *Checker {
	return &Checker{s: s, active: map[string]bool{}, seen: map[string]bool{}}
}

func (s *Sim) violation(inv Invariant, format string, args ...any) {
	s.Check.report(inv, fmt.Sprintf(format, args...))
}

func (c *Checker) report(inv Invariant, msg string) {
	v := Violation{Inv: inv, At: c.s.E.Elapsed(), Msg: msg}
	c.Violations = append(c.Violations, v)
	c.s.E.trace.Addf("check", "VIOLATION %s: %s", inv, msg)
}

// Failed reports whether any invariant was broken.
func (c *Checker) Failed() bool { return len(c.Violations) > 0 }

// afterEvent checks the step invariants (1 and 4). A broken invariant is
// reported when it starts to hold broken, not again at every step.
func (c *Checker) afterEvent() {
	now := map[string]string{} // key → message
	running := c.running()
	// (1) One qemu per VM.
	where := map[string][]string{}
	for _, h := range c.s.Hosts {
		for _, q := range running[h.Name] {
			if !q.Foreign {
				where[q.UUID] = append(where[q.UUID], h.Name)
			}
		}
	}
	ids := make([]string, 0, len(where))
	for id := range where {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		hosts := where[id]
		if len(hosts) < 2 {
			continue
		}
		var counted []string
		for _, h := range hosts {
			if !c.s.Ops.lieActive(h, c.s.E.Now()) {
				counted = append(counted, h)
			}
		}
		if len(counted) < 2 && len(counted) < len(hosts) {
			key := "1-exempt " + id
			now[key] = ""
			if !c.active[key] {
				c.s.E.trace.Addf("check", "vm %s runs on %s: not counted against invariant 1 (a --confirm-fenced lie about %s is not corrected yet)",
					structs.ShortID(id), strings.Join(hosts, ", "), strings.Join(hosts, "/"))
			}
			continue
		}
		key := string(InvUnique) + " " + id + " " + strings.Join(hosts, ",")
		now[key] = fmt.Sprintf("vm %s has a live qemu on %s", structs.ShortID(id), strings.Join(hosts, " and "))
	}
	// (4) A normal node runs only what is placed on it.
	if l := c.s.Cluster.leader; l != nil {
		c.checkNormalClean(l, running, now)
	}
	keys := make([]string, 0, len(now))
	for key := range now {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if msg := now[key]; !c.active[key] && msg != "" {
			c.report(Invariant(strings.Fields(key)[0]), msg)
		}
	}
	c.active = map[string]bool{}
	for key := range now {
		c.active[key] = true
	}
}

// running reads every host's qemus.
func (c *Checker) running() map[string][]RunningQemu {
	hvs := make([]*Hypervisor, len(c.s.Hosts))
	for i, h := range c.s.Hosts {
		hvs[i] = h.HV
	}
	return SnapshotRunning(hvs...)
}

// leaderView is the leader's nodes and VMs, read again only when the
// leader or its applied index changed (the checker runs after every event;
// most events change nothing).
type leaderView struct {
	srv   *Server
	index uint64
	nodes []structs.Node
	vms   map[string]structs.VM
	ok    bool
}

func (c *Checker) view(l *Server) *leaderView {
	v := &c.cache
	if v.srv == l && v.index == l.FSM.Index() && v.ok {
		return v
	}
	*v = leaderView{srv: l, index: l.FSM.Index(), vms: map[string]structs.VM{}}
	nodes, err := l.FSM.Nodes()
	if err != nil {
		return v
	}
	vms, err := l.FSM.VMs()
	if err != nil {
		return v
	}
	v.nodes, v.ok = nodes, true
	for _, vm := range vms {
		v.vms[vm.ID] = vm
	}
	return v
}

func (c *Checker) checkNormalClean(l *Server, running map[string][]RunningQemu, now map[string]string) {
	view := c.view(l)
	if !view.ok {
		return
	}
	for _, n := range view.nodes {
		if n.MonitorState != structs.MonitorNormal {
			continue
		}
		h := c.s.hostByNode(n.ID)
		if h == nil {
			continue
		}
		for _, q := range running[h.Name] {
			if q.Foreign {
				continue
			}
			vm, ok := view.vms[q.UUID]
			if !ok {
				continue // a deleted VM's copy: the agent's to clean; not a placement question
			}
			if vm.IncomingHere(n.ID) || vm.ObservationCurrent(n.ID, q.Generation) {
				continue
			}
			if c.s.localMigrationGrace(q.UUID, h.Name) {
				continue
			}
			if nl := vm.NodeLocal; vm.HeldByNodeLocal() && nl.To == n.ID && nl.Generation == q.Generation {
				// The servers know this copy may be here (the node announced
				// the node-local migration, or the source reported it with
				// an unknown outcome) and hold the VM for it: not stale.
				continue
			}
			key := fmt.Sprintf("%s %s %s %d", InvNormalClean, h.Name, q.UUID, q.Generation)
			now[key] = fmt.Sprintf("node %s (%s) is normal while it runs vm %s generation %d, placed on %s generation %d",
				n.Name, h.Name, structs.ShortID(q.UUID), q.Generation, c.nodeName(l, vm.NodeID), vm.Generation)
		}
	}
}

func (c *Checker) nodeName(l *Server, id string) string {
	if id == "" {
		return "no node (pending)"
	}
	if n, err := l.FSM.Node(id); err == nil {
		return n.Name
	}
	return structs.ShortID(id)
}

// Final checks the end-of-run invariants (2, 3, 5, 6). It is run after the
// faults were healed and a quiet period passed.
func (c *Checker) Final() {
	l := c.s.Cluster.leader
	if l == nil {
		c.report(InvLiveness, "no leader after the quiet period")
		return
	}
	c.finalAcked(l)
	c.finalLiveness(l)
	c.finalConverge(l)
	c.finalIncidents(l)
}

// finalAcked (2): every acknowledged create exists unless a delete was
// sent after it; every VM's desired state is the last acknowledged one,
// or one asked for by a later write whose answer was lost.
func (c *Checker) finalAcked(l *Server) {
	type hist struct{ writes []Write }
	byName := map[string]*hist{}
	var names []string
	for _, w := range c.s.Ops.Writes {
		if w.Local != "" || w.Desired == "" && w.Op != "delete" {
			continue // an HA operation or a node action: no desired state to keep
		}
		h := byName[w.VM]
		if h == nil {
			h = &hist{}
			byName[w.VM] = h
			names = append(names, w.VM)
		}
		h.writes = append(h.writes, w)
	}
	sort.Strings(names)
	for _, name := range names {
		ws := byName[name].writes
		lastAck := -1
		for i, w := range ws {
			if w.Acked {
				lastAck = i
			}
		}
		if lastAck < 0 {
			continue
		}
		deleteSent := false
		possible := map[string]bool{}
		for _, w := range ws[lastAck:] {
			if w.Op == "delete" {
				deleteSent = true
			}
			if w.Desired != "" {
				possible[w.Desired] = true
			}
			if w.Op == "restart" && !w.Acked {
				// A restart is two writes (stop, then start): one that
				// failed may have applied its stop alone, and says so.
				possible[structs.DesiredStopped] = true
			}
		}
		// The desired state before the last acknowledged write is gone:
		// only the last acknowledged one and later attempts count.
		created := false
		for _, w := range ws[:lastAck+1] {
			if w.Op == "create" && w.Acked {
				created = true
			}
		}
		vm, err := l.FSM.ResolveVM(name)
		switch {
		case err != nil && deleteSent:
		case err != nil && created:
			c.report(InvAcked, fmt.Sprintf("vm %s: acknowledged create, no delete sent, but the leader has no such VM (%v)", name, err))
		case err == nil && ws[lastAck].Op == "delete":
			c.report(InvAcked, fmt.Sprintf("vm %s: acknowledged delete, but the VM exists", name))
		case err == nil && len(possible) > 0 && !possible[vm.DesiredState] && !deleteSent:
			c.report(InvAcked, fmt.Sprintf("vm %s: desired %s, but the last acknowledged write asked for %s", name, vm.DesiredState, ws[lastAck].Desired))
		}
	}
}

// healthyHost reports whether the world lets host h run VMs: powered,
// libvirtd up, agent running and not frozen, management link up.
func (c *Checker) healthyHost(h *Host) bool {
	return h.powered && h.HV.LibvirtdUp() && h.proc != nil && !h.frozen && c.s.Net.LinkUp(h.Name, Mgmt)
}

// unreleasedLocalDrain reports whether node n keeps a local drain
// (`chime agent drain`) that the operator had no chance to release: no
// acknowledged `node enable` was sent while the leader knew its id. Such
// a node legitimately keeps its VMs stopped (an enable sent before the
// servers heard of the drain cannot name it); one enabled while the drain
// was known must have released it (finding 11), so it is counted.
func (c *Checker) unreleasedLocalDrain(n *structs.Node) bool {
	active := n.LocalDrained || n.LocalDrainState != ""
	if !active || n.LocalDrainID == "" || n.LocalDrainID == n.ReleasedDrainID {
		return false
	}
	return !c.s.Ops.enabledKnowing[n.ID+"/"+n.LocalDrainID]
}

// finalLiveness (3).
func (c *Checker) finalLiveness(l *Server) {
	vms, err := l.FSM.VMs()
	if err != nil {
		c.report(InvLiveness, "read vms: "+err.Error())
		return
	}
	running := c.running()
	for _, vm := range vms {
		if vm.DesiredState != structs.DesiredRunning || vm.NodeID == "" {
			continue
		}
		n, err := l.FSM.Node(vm.NodeID)
		if err != nil || n.MonitorState != structs.MonitorNormal || n.ManagementState != structs.NodeEnabled {
			continue
		}
		if c.unreleasedLocalDrain(n) {
			c.s.E.trace.Addf("check", "vm %s not counted for liveness: node %s keeps local drain %s, which no enable has released since the servers learned of it",
				vm.Name, n.Name, n.LocalDrainID)
			continue
		}
		h := c.s.hostByNode(n.ID)
		if h == nil || !c.healthyHost(h) {
			continue
		}
		ok := false
		for _, q := range running[h.Name] {
			if q.UUID == vm.ID && vm.ObservationCurrent(n.ID, q.Generation) {
				ok = true
			}
		}
		if !ok {
			c.report(InvLiveness, fmt.Sprintf("vm %s (generation %d) is desired running on healthy node %s but does not run there", vm.Name, vm.Generation, n.Name))
		}
	}
}

// finalConverge (5): every up server holds the leader's state, and every
// observation the leader holds for a VM on a healthy node matches what
// that host's hypervisor runs.
func (c *Checker) finalConverge(l *Server) {
	want, err := l.FSM.Dump()
	if err != nil {
		c.report(InvConverge, "dump leader: "+err.Error())
		return
	}
	for _, s := range c.s.Cluster.Servers {
		if s == l || !s.up {
			continue
		}
		got, err := s.FSM.Dump()
		if err != nil {
			c.report(InvConverge, "dump "+s.Name+": "+err.Error())
			continue
		}
		if !reflect.DeepEqual(got, want) {
			c.report(InvConverge, fmt.Sprintf("server %s's state differs from the leader %s's (applied %d vs %d): %s",
				s.Name, l.Name, s.applied, l.applied, dumpDiff(want, got)))
		}
	}
	// A node whose host is healthy after the quiet period, and whose agent
	// is registered, is normal again: its agent heartbeats. One that is not
	// is a view that never converged. An agent the servers do not let
	// register (a lost state dir on a host whose identity no longer
	// matches its node's binding, without the operator's reset-secret; a
	// cloned host identity) leaves its node unreachable by design: the
	// servers cannot know what runs there.
	nodes, err := l.FSM.Nodes()
	if err != nil {
		c.report(InvConverge, "read nodes: "+err.Error())
		return
	}
	compare := map[string]bool{} // nodes whose observations are compared with the hypervisors
	for _, n := range nodes {
		compare[n.ID] = n.MonitorState == structs.MonitorNormal
		h := c.s.hostByNode(n.ID)
		if h == nil || !c.healthyHost(h) || compare[n.ID] {
			continue
		}
		if !h.proc.reg {
			// Not let back in: its observations show the views that
			// never converge (until the operator's reset-secret).
			compare[n.ID] = true
			continue
		}
		c.report(InvConverge, fmt.Sprintf("node %s is %s in the leader's state, although its host is healthy and its agent registered", n.Name, n.MonitorState))
	}
	vms, err := l.FSM.VMs()
	if err != nil {
		return
	}
	running := c.running()
	for _, vm := range vms {
		// The observations of a node that is not normal are the last it
		// sent, not a claim about now: the node check above reports the
		// node itself (unless its agent is not let back in).
		if vm.NodeID == "" || !compare[vm.NodeID] {
			continue
		}
		h := c.s.hostByNode(vm.NodeID)
		if h == nil || !c.healthyHost(h) {
			continue
		}
		runs := false
		for _, q := range running[h.Name] {
			if q.UUID == vm.ID {
				runs = true
			}
		}
		observedRunning := vm.Observed != nil && vm.Observed.NodeID == vm.NodeID && vm.Observed.State == hypervisor.StateRunning
		if runs != observedRunning {
			c.report(InvConverge, fmt.Sprintf("vm %s on %s: the hypervisor %s it, the leader's observation says %s",
				vm.Name, h.Name, map[bool]string{true: "runs", false: "does not run"}[runs], vm.DeriveState()))
		}
	}
}

// dumpDiff names the first few keys that differ between two dumps.
func dumpDiff(a, b map[string]map[string]string) string {
	var out []string
	for bucket, kv := range a {
		for k, v := range kv {
			if b[bucket][k] != v {
				out = append(out, bucket+"/"+k)
			}
		}
	}
	for bucket, kv := range b {
		for k := range kv {
			if _, ok := a[bucket][k]; !ok {
				out = append(out, bucket+"/"+k+" (extra)")
			}
		}
	}
	sort.Strings(out)
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("... %d more", len(out)-5))
	}
	return strings.Join(out, ", ")
}
