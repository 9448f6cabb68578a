package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// Timing of the fleet's servers (newFleetWith passes --heartbeat-interval
// 1s; --missed-heartbeats keeps its default).
const (
	monInterval = time.Second
	monMissed   = 3
	// monPingBack is the direct ping-back's timeout: min(interval, 5 s).
	monPingBack = monInterval
	// monBizInterval is the agents' --business-probe-interval.
	monBizInterval = 2 * time.Second
)

// monDetectBound is what docs/node-states.md promises for a silent node:
// missed × interval + the monitor's tick (interval/4) + the ping-back.
const monDetectBound = monMissed*monInterval + monInterval/4 + monPingBack

// monFaultBound is the promise for a business link that goes down: the
// next probe round, then a heartbeat sent at once.
const monFaultBound = monBizInterval + monInterval

// TestMonitor is issue 4's end-to-end check of failure detection, node
// states and alarms, with real servers, agents, libvirtd and qemu: a frozen
// agent and a cut management link turn a node unreachable (and back), a
// business link down turns it error, a leader kill makes no node leave
// normal, and placement avoids every node that is not enabled and normal.
// Alarms are received by a webhook receiver run by the test. Bounds are
// twice the documented promise; the measured figures are logged.
func TestMonitor(t *testing.T) {
	rcv := newWebhookReceiver(t)
	target := &bizTarget{t: t}
	f := newFleetWith(t, fleetOptions{
		ServerArgs: []string{"--alarm-webhook", rcv.URL()},
		AgentArgs: func(i int, h *lab.Host) []string {
			return []string{"--business-probe", target.addr(h), "--business-probe-interval", monBizInterval.String()}
		},
	})
	if target.ip != f.lab.BizBridgeIP {
		t.Fatalf("business probe target %s is not the lab's business bridge address %s", target.ip, f.lab.BizBridgeIP)
	}
	u := startUniquenessChecker(t, f.lab.Hosts)
	// Whatever a subtest leaves behind, the fleet's cleanup must find
	// agents that run and links that are up.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i, h := range f.lab.Hosts {
			f.agents[i].signal(syscall.SIGCONT)
			_ = h.SetLink(ctx, lab.NetMgmt, true)
			_ = h.SetLink(ctx, lab.NetBiz, true)
		}
	})

	// A few VMs, so that the hosts whose nodes fail run some.
	var vms []structs.VM
	for i := 0; i < 3; i++ {
		vms = append(vms, f.createVM(t, fmt.Sprintf("mon-%d", i)))
	}
	for _, vm := range vms {
		f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
	}
	// The failing host is one that runs a VM.
	victim, _, _ := f.waitRunningOnOneHost(t, vms[0].ID, 30*time.Second)

	var figures []string
	t.Run("AgentFrozen", func(t *testing.T) {
		figures = append(figures, testAgentFrozen(t, f, rcv, victim)...)
	})
	t.Run("ManagementLinkCut", func(t *testing.T) {
		figures = append(figures, testMgmtLinkCut(t, f, rcv, victim)...)
	})
	t.Run("BusinessLinkDown", func(t *testing.T) {
		figures = append(figures, testBizLinkDown(t, f, rcv, (victim+1)%len(f.lab.Hosts))...)
	})
	t.Run("OneDeliveryPerTransition", func(t *testing.T) {
		// Two unreachable episodes of the victim, one error episode of
		// the next host: each transition delivered exactly once.
		bizHost := f.lab.Hosts[(victim+1)%len(f.lab.Hosts)].Name
		for _, c := range []struct {
			name, node, status string
			want               int
		}{
			{"NodeUnreachable", f.lab.Hosts[victim].Name, "firing", 2},
			{"NodeUnreachable", f.lab.Hosts[victim].Name, "resolved", 2},
			{"NodeError", bizHost, "firing", 1},
			{"NodeError", bizHost, "resolved", 1},
		} {
			if got := rcv.count(c.name, c.node, c.status); got != c.want {
				t.Errorf("%s %s for %s delivered %d times, want %d (%s)", c.status, c.name, c.node, got, c.want, rcv)
			}
		}
	})
	t.Run("LeaderKilled", func(t *testing.T) {
		figures = append(figures, testLeaderKilled(t, f, rcv)...)
	})
	t.Run("PlacementExcludesUnhealthy", func(t *testing.T) { testPlacementExcludes(t, f) })
	u.check(t)
	t.Logf("figures (interval %s, missed %d, business probe every %s, domain type %s):\n  %s",
		monInterval, monMissed, monBizInterval, lab.DomainType(), strings.Join(figures, "\n  "))
}

// testAgentFrozen: SIGSTOP of host hi's agent → unreachable and a firing
// NodeUnreachable; SIGCONT → normal and resolved. The host's VMs keep
// running throughout.
func testAgentFrozen(t *testing.T, f *fleet, rcv *webhookReceiver, hi int) []string {
	h := f.lab.Hosts[hi]
	pid := f.agentPID(t, hi)
	watch := f.watchRunning(t, hi)
	seq := f.lastEventSeq(t)
	t0 := time.Now()
	f.agents[hi].signal(syscall.SIGSTOP)
	wait.For(t, 5*time.Second, fmt.Sprintf("agent pid %d stopped", pid), func() (bool, string) {
		if s := procState(pid); s != "T" {
			return false, "state " + s
		}
		return true, ""
	})
	detect := f.waitMonitor(t, h.Name, structs.MonitorUnreachable, t0, 2*monDetectBound)
	alarm := waitAlarm(t, rcv, "NodeUnreachable", h.Name, "firing", t0, 2*monDetectBound)
	reason := f.eventSince(t, "node.unreachable", h.Name, seq)
	t.Logf("agent of %s (pid %d) frozen: unreachable after %s, firing alarm after %s (bound %s); event: %s",
		h.Name, pid, detect.Round(time.Millisecond), alarm.Round(time.Millisecond), 2*monDetectBound, reason)

	t1 := time.Now()
	f.agents[hi].signal(syscall.SIGCONT)
	back := f.waitMonitor(t, h.Name, structs.MonitorNormal, t1, 2*monDetectBound)
	resolved := waitAlarm(t, rcv, "NodeUnreachable", h.Name, "resolved", t1, 2*monDetectBound)
	t.Logf("agent of %s resumed: normal after %s, resolved alarm after %s", h.Name, back.Round(time.Millisecond), resolved.Round(time.Millisecond))
	watch.check(t)
	return []string{
		fmt.Sprintf("agent SIGSTOP → unreachable %s, alarm %s (promise %s); SIGCONT → normal %s, resolved %s",
			detect.Round(10*time.Millisecond), alarm.Round(10*time.Millisecond), monDetectBound,
			back.Round(10*time.Millisecond), resolved.Round(10*time.Millisecond)),
	}
}

// testMgmtLinkCut: host hi's management link down → unreachable and a
// firing alarm; up → normal and resolved. The VMs keep running.
func testMgmtLinkCut(t *testing.T, f *fleet, rcv *webhookReceiver, hi int) []string {
	h := f.lab.Hosts[hi]
	watch := f.watchRunning(t, hi)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seq := f.lastEventSeq(t)
	t0 := time.Now()
	if err := h.SetLink(ctx, lab.NetMgmt, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.SetLink(context.Background(), lab.NetMgmt, true) })
	detect := f.waitMonitor(t, h.Name, structs.MonitorUnreachable, t0, 2*monDetectBound)
	alarm := waitAlarm(t, rcv, "NodeUnreachable", h.Name, "firing", t0, 2*monDetectBound)
	reason := f.eventSince(t, "node.unreachable", h.Name, seq)
	t.Logf("management link of %s cut: unreachable after %s, firing alarm after %s (bound %s); event: %s",
		h.Name, detect.Round(time.Millisecond), alarm.Round(time.Millisecond), 2*monDetectBound, reason)

	t1 := time.Now()
	if err := h.SetLink(ctx, lab.NetMgmt, true); err != nil {
		t.Fatal(err)
	}
	// The agent's next heartbeat may wait for its HTTP client's retry
	// back-off after the failures while cut: allow more than one period.
	back := f.waitMonitor(t, h.Name, structs.MonitorNormal, t1, 30*time.Second)
	resolved := waitAlarm(t, rcv, "NodeUnreachable", h.Name, "resolved", t1, 30*time.Second)
	t.Logf("management link of %s restored: normal after %s, resolved alarm after %s", h.Name, back.Round(time.Millisecond), resolved.Round(time.Millisecond))
	watch.check(t)
	return []string{
		fmt.Sprintf("management link cut → unreachable %s, alarm %s (promise %s); restored → normal %s, resolved %s",
			detect.Round(10*time.Millisecond), alarm.Round(10*time.Millisecond), monDetectBound,
			back.Round(10*time.Millisecond), resolved.Round(10*time.Millisecond)),
	}
}

// testBizLinkDown: host hi's business link down → error with the fault
// named, NodeError firing; up → normal, resolved.
func testBizLinkDown(t *testing.T, f *fleet, rcv *webhookReceiver, hi int) []string {
	h := f.lab.Hosts[hi]
	watch := f.watchRunning(t, hi)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seq := f.lastEventSeq(t)
	t0 := time.Now()
	if err := h.SetLink(ctx, lab.NetBiz, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.SetLink(context.Background(), lab.NetBiz, true) })
	detect := f.waitMonitor(t, h.Name, structs.MonitorError, t0, 2*monFaultBound)
	var n structs.Node
	if err := f.chimeJSON(&n, "node", "show", h.Name); err != nil {
		t.Fatal(err)
	}
	wantFault := "business network unreachable: interface " + h.BizIf + " has no carrier"
	if len(n.Faults) != 1 || n.Faults[0] != wantFault {
		t.Fatalf("node show %s: faults %q, want [%q]", h.Name, n.Faults, wantFault)
	}
	alarm := waitAlarm(t, rcv, "NodeError", h.Name, "firing", t0, 2*monFaultBound)
	if a, _ := rcv.find("NodeError", h.Name, "firing", t0); !strings.Contains(a.Msg.Alerts[0].Annotations["summary"], wantFault) {
		t.Errorf("NodeError summary %q does not name the fault %q", a.Msg.Alerts[0].Annotations["summary"], wantFault)
	}
	t.Logf("business link of %s down: error %v after %s, NodeError firing after %s (bound %s); event: %s",
		h.Name, n.Faults, detect.Round(time.Millisecond), alarm.Round(time.Millisecond), 2*monFaultBound,
		f.eventSince(t, "node.error", h.Name, seq))

	t1 := time.Now()
	if err := h.SetLink(ctx, lab.NetBiz, true); err != nil {
		t.Fatal(err)
	}
	back := f.waitMonitor(t, h.Name, structs.MonitorNormal, t1, 2*monFaultBound)
	resolved := waitAlarm(t, rcv, "NodeError", h.Name, "resolved", t1, 2*monFaultBound)
	t.Logf("business link of %s up: normal after %s, NodeError resolved after %s", h.Name, back.Round(time.Millisecond), resolved.Round(time.Millisecond))
	watch.check(t)
	return []string{
		fmt.Sprintf("business link down → error %s, alarm %s (promise %s); up → normal %s, resolved %s",
			detect.Round(10*time.Millisecond), alarm.Round(10*time.Millisecond), monFaultBound,
			back.Round(10*time.Millisecond), resolved.Round(10*time.Millisecond)),
	}
}

// testLeaderKilled: kill -9 of the leader while every node is healthy →
// no node leaves normal (watched through the surviving servers for three
// times the detection bound), no node.unreachable event, no alarm.
func testLeaderKilled(t *testing.T, f *fleet, rcv *webhookReceiver) []string {
	f.waitNodesNormal(t, 30*time.Second)
	wait.For(t, 30*time.Second, "no alarm firing", func() (bool, string) {
		var al []structs.Alarm
		if err := f.chimeJSON(&al, "alarm", "list"); err != nil {
			return false, err.Error()
		}
		if len(al) > 0 {
			return false, fmt.Sprintf("%d firing: %+v", len(al), al)
		}
		return true, ""
	})
	lastSeq := f.lastEventSeq(t)
	leader := f.ss.leader(30 * time.Second)
	t0 := time.Now()
	f.ss.procs[leader].kill()
	t.Logf("killed leader %s (kill -9) at event seq %d", f.ss.names[leader], lastSeq)

	watch := 3 * 2 * monDetectBound
	var newLeader time.Duration
	polls := 0
	holdFor(t, watch, "every node stays normal after the leader was killed", func() string {
		nodes, err := f.nodesByName()
		if err != nil {
			return "" // no server answers during the election: nothing to see
		}
		polls++
		if newLeader == 0 {
			if _, ok := f.runningLeader(); ok {
				newLeader = time.Since(t0)
			}
		}
		for name, n := range nodes {
			if n.MonitorState != structs.MonitorNormal {
				return fmt.Sprintf("%s is %s (%v) %s after the kill", name, n.MonitorState, n.Faults, time.Since(t0).Round(time.Millisecond))
			}
		}
		return ""
	})
	if polls == 0 {
		t.Fatal("no surviving server answered while watching the nodes")
	}
	if newLeader == 0 {
		t.Fatalf("no new leader within %s", watch)
	}
	// The same command over the whole log lists the node.unreachable
	// events of the earlier subtests: the check below is not vacuous.
	all, _ := f.eventsAfter(t, 0)
	unreachable := 0
	for _, e := range all {
		if e.Kind == "node.unreachable" && e.Seq <= lastSeq {
			unreachable++
		}
	}
	if unreachable == 0 {
		t.Fatalf("event stream --no-follow from the start lists no node.unreachable event (%d events)", len(all))
	}
	events, took := f.eventsAfter(t, lastSeq)
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, e.Kind)
		if e.Kind == "node.unreachable" || e.Kind == "node.error" || e.Kind == "alarm.firing" {
			t.Errorf("event after the leader kill: %d %s %s", e.Seq, e.Kind, e.Message)
		}
	}
	// A resolved alarm of an earlier subtest may legitimately be sent once
	// more (delivery is at-least-once when the old leader died before
	// recording the delivery); nothing may fire.
	got := rcv.since(t0)
	for _, a := range got {
		if a.Status == "firing" {
			t.Errorf("alarm fired after the leader kill: %s %s/%s", a.At.Format("15:04:05.000"), a.Name, a.Node)
		}
	}
	t.Logf("leader killed: new leader after %s; %d polls over %s, every node normal; events since: %v (event stream --no-follow took %s); %d deliveries at the receiver since the kill",
		newLeader.Round(time.Millisecond), polls, watch, kinds, took.Round(time.Millisecond), len(got))

	// Restore the three-server cluster.
	f.ss.start(leader)
	wait.For(t, 60*time.Second, "server "+f.ss.names[leader]+" back", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := f.apiClient(leader).Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		if !st.Healthy {
			return false, fmt.Sprintf("status %+v", st)
		}
		return true, ""
	})
	return []string{fmt.Sprintf("leader kill -9 → new leader %s, no node left normal in %s", newLeader.Round(10*time.Millisecond), watch)}
}

// testPlacementExcludes: VMs created while nodes are disabled, error,
// drained or unreachable land only on the remaining healthy node, as the
// servers' placement and libvirt both say.
func testPlacementExcludes(t *testing.T, f *fleet) {
	ok := 2 // the node that stays enabled and normal
	a, b := f.lab.Hosts[0], f.lab.Hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var created []structs.VM

	// Round 1: a disabled, b error (business link down).
	f.mustChime(t, "node", "disable", a.Name)
	if err := b.SetLink(ctx, lab.NetBiz, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.SetLink(context.Background(), lab.NetBiz, true) })
	f.waitNode(t, a.Name, structs.NodeDisabled, structs.MonitorNormal, 30*time.Second)
	f.waitNode(t, b.Name, structs.NodeEnabled, structs.MonitorError, 2*monFaultBound)
	created = append(created, f.createAndExpectOn(t, "excl-a", 3, ok)...)
	f.mustChime(t, "node", "enable", a.Name)
	if err := b.SetLink(ctx, lab.NetBiz, true); err != nil {
		t.Fatal(err)
	}
	f.waitNode(t, a.Name, structs.NodeEnabled, structs.MonitorNormal, 30*time.Second)
	f.waitNode(t, b.Name, structs.NodeEnabled, structs.MonitorNormal, 2*monFaultBound)

	// Round 2: a drained, b unreachable (agent frozen).
	var task structs.Task
	if err := f.chimeJSON(&task, "node", "drain", a.Name); err != nil {
		t.Fatal(err)
	}
	f.agents[1].signal(syscall.SIGSTOP)
	t.Cleanup(func() { f.agents[1].signal(syscall.SIGCONT) })
	f.waitNode(t, a.Name, structs.NodeDrained, structs.MonitorNormal, 30*time.Second)
	f.waitNode(t, b.Name, structs.NodeEnabled, structs.MonitorUnreachable, 2*monDetectBound)
	created = append(created, f.createAndExpectOn(t, "excl-b", 3, ok)...)
	f.agents[1].signal(syscall.SIGCONT)
	f.mustChime(t, "node", "enable", a.Name)
	f.waitNode(t, a.Name, structs.NodeEnabled, structs.MonitorNormal, 30*time.Second)
	f.waitNode(t, b.Name, structs.NodeEnabled, structs.MonitorNormal, 2*monDetectBound)

	// Back to normal: the VMs stay where they are, the drained node's VMs
	// run again, and every host runs exactly what the servers placed on it.
	wait.For(t, 90*time.Second, "libvirt converged with the servers' placement", func() (bool, string) {
		seen := f.converged(nil)
		return seen == "", seen
	})
	for _, vm := range created {
		if hi, _, _ := f.waitRunningOnOneHost(t, vm.ID, 30*time.Second); hi != ok {
			t.Fatalf("%s runs on %s after the nodes recovered, was placed on %s", vm.Name, f.lab.Hosts[hi].Name, f.lab.Hosts[ok].Name)
		}
	}
}

// createAndExpectOn creates n VMs named prefix-N and checks, through the
// servers' placement and through libvirt on every host, that each runs on
// host hi and nowhere else.
func (f *fleet) createAndExpectOn(t *testing.T, prefix string, n, hi int) []structs.VM {
	t.Helper()
	want := f.lab.Hosts[hi].Name
	var vms []structs.VM
	for i := 0; i < n; i++ {
		vms = append(vms, f.createVM(t, fmt.Sprintf("%s-%d", prefix, i)))
	}
	states := f.nodeStateSummary(t)
	for _, vm := range vms {
		host, _, took := f.waitRunningOnOneHost(t, vm.ID, 90*time.Second)
		got := f.vmByName(t, vm.Name)
		if placed := f.nodes[got.NodeID]; placed != want || host != hi {
			t.Fatalf("%s: servers placed it on %q, libvirt runs it on %s; want %s only (nodes: %v)",
				vm.Name, placed, f.lab.Hosts[host].Name, want, states)
		}
		t.Logf("%s placed on %s and running there after %s (nodes: %v)", vm.Name, want, took.Round(time.Millisecond), states)
	}
	return vms
}

// nodeStateSummary is "name management/monitor" for every node.
func (f *fleet) nodeStateSummary(t *testing.T) []string {
	t.Helper()
	nodes, err := f.nodesByName()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for name, n := range nodes {
		out = append(out, name+" "+n.ManagementState+"/"+n.MonitorState)
	}
	sort.Strings(out)
	return out
}

// waitNode waits until node name has both states.
func (f *fleet) waitNode(t *testing.T, name, mgmt, mon string, timeout time.Duration) {
	t.Helper()
	wait.For(t, timeout, fmt.Sprintf("node %s %s/%s", name, mgmt, mon), func() (bool, string) {
		nodes, err := f.nodesByName()
		if err != nil {
			return false, err.Error()
		}
		n := nodes[name]
		if n.ManagementState != mgmt || n.MonitorState != mon {
			return false, fmt.Sprintf("%s/%s %v", n.ManagementState, n.MonitorState, n.Faults)
		}
		return true, ""
	})
}

// waitMonitor waits until node name's monitor state is state and returns
// the time since t0.
func (f *fleet) waitMonitor(t *testing.T, name, state string, t0 time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	wait.For(t, timeout-time.Since(t0), fmt.Sprintf("node %s %s", name, state), func() (bool, string) {
		nodes, err := f.nodesByName()
		if err != nil {
			return false, err.Error()
		}
		if n := nodes[name]; n.MonitorState != state {
			return false, fmt.Sprintf("%s %v", n.MonitorState, n.Faults)
		}
		return true, ""
	})
	return time.Since(t0)
}

// waitAlarm waits until the receiver got alertname for node with status
// after t0 and returns the delivery's time since t0.
func waitAlarm(t *testing.T, rcv *webhookReceiver, name, node, status string, t0 time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	var got receivedAlert
	wait.For(t, timeout-time.Since(t0), fmt.Sprintf("%s %s for %s at the receiver", status, name, node), func() (bool, string) {
		a, ok := rcv.find(name, node, status, t0)
		if !ok {
			return false, rcv.String()
		}
		got = a
		return true, ""
	})
	return got.At.Sub(t0)
}

// since returns the deliveries received at or after t0.
func (w *webhookReceiver) since(t0 time.Time) []receivedAlert {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []receivedAlert
	for _, a := range w.got {
		if !a.At.Before(t0) {
			out = append(out, a)
		}
	}
	return out
}

// nodesByName asks the running servers (the first that answers) for the
// node list, by API rather than CLI so that polling is cheap.
func (f *fleet) nodesByName() (map[string]structs.Node, error) {
	var err error
	for i, p := range f.ss.procs {
		if p == nil || !p.running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var nodes []structs.Node
		c := f.apiClient(i)
		c.Retries = 0
		nodes, _, err = c.ListNodes(ctx, api.QueryOptions{})
		cancel()
		if err == nil {
			out := make(map[string]structs.Node, len(nodes))
			for _, n := range nodes {
				out[n.Name] = n
			}
			return out, nil
		}
	}
	if err == nil {
		err = errors.New("no server running")
	}
	return nil, err
}

// runningLeader reports which running server says it is the leader.
func (f *fleet) runningLeader() (int, bool) {
	for i, p := range f.ss.procs {
		if p == nil || !p.running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := f.apiClient(i).Status(ctx)
		cancel()
		if err == nil && st.IsLeader {
			return i, true
		}
	}
	return -1, false
}

// agentPID is host hi's agent process: the pid startProc started, which
// `ip netns exec` replaced by chime itself (it execs, not forks). The
// test signals the process group all the same.
func (f *fleet) agentPID(t *testing.T, hi int) int {
	t.Helper()
	pid := f.agents[hi].cmd.Process.Pid
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		t.Fatalf("agent of %s: %v", f.lab.Hosts[hi].Name, err)
	}
	if comm := strings.TrimSpace(string(data)); comm != "chime" {
		t.Logf("agent of %s: pid %d is %q, not chime: signals go to its process group", f.lab.Hosts[hi].Name, pid, comm)
	}
	return pid
}

// procState is the one-letter state of pid ("S", "T", …) from /proc.
func procState(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "gone"
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return "?"
	}
	return s[i+2 : i+3]
}

// eventSince returns the message of the first event of kind for node name
// with a sequence number above seq.
func (f *fleet) eventSince(t *testing.T, kind, name string, seq uint64) string {
	t.Helper()
	nodes, err := f.nodesByName()
	if err != nil {
		t.Fatal(err)
	}
	id := nodes[name].ID
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, _, err := f.ss.clientAll().Events(ctx, seq, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ev {
		if e.Kind == kind && e.NodeID == id && e.Seq > seq {
			return fmt.Sprintf("#%d %s", e.Seq, e.Message)
		}
	}
	t.Fatalf("no %s event for %s after seq %d", kind, name, seq)
	return ""
}

// lastEventSeq is the sequence number of the newest event.
func (f *fleet) lastEventSeq(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, last, err := f.ss.clientAll().Events(ctx, 0, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ev); n > 0 && ev[n-1].Seq > last {
		last = ev[n-1].Seq
	}
	return last
}

// eventsAfter reads the event log after seq as an operator would:
// `chime event stream --no-follow -o json --after SEQ` (one JSON object
// per event).
func (f *fleet) eventsAfter(t *testing.T, seq uint64) ([]structs.Event, time.Duration) {
	t.Helper()
	var addr string
	for i, p := range f.ss.procs {
		if p != nil && p.running() {
			addr = f.ss.addr(i)
			break
		}
	}
	// --no-follow prints what is there and exits: it must not wait for
	// the blocking query's 30 s.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	out, err := f.tls.runCLI(ctx, "event", "stream", "--no-follow", "-o", "json", "--after", strconv.FormatUint(seq, 10), "--address", addr)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	var events []structs.Event
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var e structs.Event
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode event stream %q: %v", out, err)
		}
		events = append(events, e)
	}
	return events, took
}

// runningWatch checks, every 500 ms until check, that the VMs running on a
// host when it started keep running there with the same qemu process:
// nothing chime does to a failing node may touch its VMs.
type runningWatch struct {
	host   *lab.Host
	want   map[string]int // uuid → qemu pid
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	polls  int
	broken string // first violation
}

func (f *fleet) watchRunning(t *testing.T, hi int) *runningWatch {
	t.Helper()
	h := f.lab.Hosts[hi]
	ctx, cancel := context.WithCancel(context.Background())
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	procs, err := h.QemuProcesses(qctx)
	qcancel()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &runningWatch{host: h, want: procs, cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	t.Cleanup(w.stop)
	return w
}

func (w *runningWatch) run(ctx context.Context) {
	defer close(w.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		msg := w.poll(ctx)
		w.mu.Lock()
		w.polls++
		if msg != "" && w.broken == "" {
			w.broken = time.Now().Format("15:04:05.000 ") + msg
		}
		w.mu.Unlock()
	}
}

func (w *runningWatch) poll(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	running, err := libvirtUUIDs(ctx, w.host, false)
	if err != nil {
		if ctx.Err() != nil {
			return ""
		}
		return err.Error()
	}
	procs, err := w.host.QemuProcesses(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ""
		}
		return err.Error()
	}
	for uuid, pid := range w.want {
		if !running[uuid] {
			return fmt.Sprintf("libvirt on %s no longer runs %s", w.host.Name, uuid)
		}
		if procs[uuid] != pid {
			return fmt.Sprintf("qemu of %s on %s changed: pid %d → %d", uuid, w.host.Name, pid, procs[uuid])
		}
	}
	return ""
}

func (w *runningWatch) stop() {
	w.cancel()
	<-w.done
}

// check stops the watch and fails t on a violation.
func (w *runningWatch) check(t *testing.T) {
	t.Helper()
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken != "" {
		t.Fatalf("VMs on %s disturbed: %s", w.host.Name, w.broken)
	}
	if w.polls == 0 {
		t.Fatalf("VMs on %s: no poll completed", w.host.Name)
	}
	t.Logf("%d VMs on %s kept running with the same qemu processes (%d polls)", len(w.want), w.host.Name, w.polls)
}

// bizTarget is the agents' business probe target: a TCP listener in the
// root namespace on the business bridge's address (10.232.X.1, the first
// address of the hosts' business subnet), reachable only over the
// business network.
type bizTarget struct {
	t    *testing.T
	once sync.Once
	ip   string
	port int
}

func (b *bizTarget) addr(h *lab.Host) string {
	b.once.Do(func() {
		ip, err := netip.ParseAddr(h.BizIP)
		if err != nil {
			b.t.Fatalf("host %s business address %q: %v", h.Name, h.BizIP, err)
		}
		pfx, _ := ip.Prefix(24)
		b.ip = pfx.Addr().Next().String()
		l, err := net.Listen("tcp", net.JoinHostPort(b.ip, "0"))
		if err != nil {
			b.t.Fatalf("business probe target: %v", err)
		}
		b.port = l.Addr().(*net.TCPAddr).Port
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		b.t.Cleanup(func() { l.Close() })
	})
	return net.JoinHostPort(b.ip, strconv.Itoa(b.port))
}
