package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/integration/lab"
	"github.com/chime-ha/chime/integration/wait"
)

// TestAutoHA is automatic HA on real libvirt: a host with ha VMs loses
// power (every process of its namespace killed, both links cut) and,
// without any operator command, its ha VMs run on the other hosts, each
// exactly once (the uniqueness checker polls every host's qemu processes
// throughout), while its VM without ha stays where it was placed. Two
// paths, each on a fleet of its own at the fleet's fast timing (1 s
// heartbeats, 3 missed):
//
//   - lease: the agents run with --isolation-response stop and a 5 s
//     lease; the servers treat the dead node as fenced 5 × 1.5 + 10 s =
//     17.5 s after its last heartbeat;
//   - fence: the servers have a --fence-command, the lab's own (labctl
//     power-off), which the leader runs once the node is unreachable.
//
// It prints, for each, the time from the power loss to unreachable, to
// fenced (the fence command's success, or the first restart on the lease),
// and to every ha VM running elsewhere.
func TestAutoHA(t *testing.T) {
	labctl := buildLabctl(t)
	for _, path := range []string{"lease", "fence"} {
		t.Run(path, func(t *testing.T) { autoHA(t, path, labctl, fastTiming) })
	}
}

// buildLabctl builds the lab's command (the fence command's body).
func buildLabctl(t *testing.T) string {
	t.Helper()
	requireLab(t)
	bin := filepath.Join(t.TempDir(), "labctl")
	out, err := exec.Command("go", "build", "-o", bin, "./lab/cmd/labctl").CombinedOutput()
	if err != nil {
		t.Fatalf("build labctl: %v\n%s", err, out)
	}
	return bin
}

// haTiming is a lab run's timing: the servers' heartbeat interval (3
// missed, the default) and the agents' isolation lease on the lease path.
type haTiming struct {
	name            string
	interval, lease time.Duration
	// margin and stopBound are the servers' --isolation-lease-margin and
	// the agents' --isolation-stop-bound on the lease path (0: defaults).
	margin, stopBound time.Duration
}

var (
	// fastTiming is the fleet's (TestAutoHA's).
	fastTiming = haTiming{name: "fast", interval: time.Second, lease: 5 * time.Second}
	// seedTiming is production's default heartbeat; the lease 20 s puts
	// the servers' lease deadline (40 s) before the detection (45 s).
	seedTiming = haTiming{name: "seed", interval: 15 * time.Second, lease: 20 * time.Second}
	// fastMarginTiming is fastTiming with a 1 s margin and agents that
	// stop their VMs within 1 s: the lease deadline is 5 × 1.5 + 1 = 8.5 s.
	fastMarginTiming = haTiming{name: "fastm", interval: time.Second, lease: 5 * time.Second,
		margin: time.Second, stopBound: time.Second}
)

// haFigures are one power loss's phases, from the power loss.
type haFigures struct{ unreachable, fenced, elsewhere time.Duration }

func autoHA(t *testing.T, path, labctl string, tm haTiming) haFigures {
	lease := tm.lease
	opts := fleetOptions{ServerArgs: []string{"--heartbeat-interval", tm.interval.String()}}
	var fenceScript string
	switch path {
	case "lease":
		opts.AgentArgs = func(int, *lab.Host) []string {
			args := []string{"--isolation-response", "stop", "--isolation-lease", lease.String()}
			if tm.stopBound != 0 {
				args = append(args, "--isolation-stop-bound", tm.stopBound.String())
			}
			return args
		}
		if tm.margin != 0 {
			opts.ServerArgs = append(opts.ServerArgs, "--isolation-lease-margin", tm.margin.String())
		}
	case "fence":
		// The lab is described in lab.json once it is up (below); the
		// script only needs its directory.
		fenceScript = filepath.Join(os.TempDir(), "chime-fence-"+fleetPrefix+".sh")
		script := fmt.Sprintf("#!/bin/sh\nexec %s power-off --dir %s \"$@\"\n", labctl, filepath.Join(fleetRoot(), "lab"))
		if err := os.WriteFile(fenceScript, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(fenceScript) })
		opts.ServerArgs = append(opts.ServerArgs, "--fence-command", fenceScript, "--fence-timeout", "30s")
	}
	f := newFleetWith(t, opts)
	if err := f.lab.WriteState(); err != nil {
		t.Fatal(err)
	}
	client := f.ss.clientAll() // TLS (the cli certificate) and the management token

	// Six ha VMs (priorities mixed) and one without ha: two of each
	// kind per host with the spread scheduler.
	prios := []string{"high", "medium", "low", "high", "medium", "low"}
	var ha []structs.VM
	for i, p := range prios {
		ha = append(ha, f.createVM(t, fmt.Sprintf("ha%d", i+1), "--ha", "--priority", p))
	}
	plain := f.createVM(t, "plain")
	for _, vm := range append(ha, plain) {
		f.waitRunningOnOneHost(t, vm.ID, 2*time.Minute)
	}
	u := startUniquenessChecker(t, f.lab.Hosts)

	// The victim: the host of the VM without ha, so that it has both kinds.
	var victim int
	{
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		hosts, err := f.where(ctx, plain.ID)
		cancel()
		if err != nil || len(hosts) != 1 {
			t.Fatalf("where is %s: %v %v", plain.Name, hosts, err)
		}
		victim = f.hostIndex(hosts[0])
	}
	h := f.lab.Hosts[victim]
	var node string
	for id, name := range f.nodes {
		if name == h.Name {
			node = id
		}
	}
	var onVictim []structs.VM
	vms, err := f.vmList()
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.NodeID == node && vm.Spec.HA {
			onVictim = append(onVictim, vm)
		}
	}
	if len(onVictim) == 0 {
		t.Fatalf("no ha VM on %s: the test needs one", h.Name)
	}
	evs, _, err := client.Events(context.Background(), 0, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var after uint64
	if len(evs) > 0 {
		after = evs[len(evs)-1].Seq
	}

	// Power loss.
	t0 := time.Now()
	{
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := h.PowerOff(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		f.agents[victim].kill() // already dead: reap it
	}
	t.Logf("%s powered off; its ha VMs: %d, and %s without ha", h.Name, len(onVictim), plain.Name)

	wait.For(t, time.Minute+5*tm.interval, h.Name+" unreachable", func() (bool, string) {
		nodes, err := f.nodeList()
		if err != nil {
			return false, err.Error()
		}
		for _, n := range nodes {
			if n.Name == h.Name {
				return n.MonitorState == structs.MonitorUnreachable, n.MonitorState
			}
		}
		return false, "node not listed"
	})
	unreachable := time.Since(t0)
	elsewhere := map[string]string{}
	wait.For(t, 2*time.Minute, "every ha VM of "+h.Name+" running on one other host", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, vm := range onVictim {
			hosts, err := whereAlive(ctx, f, vm.ID, victim)
			if err != nil {
				return false, err.Error()
			}
			if len(hosts) != 1 || hosts[0] == h.Name {
				return false, fmt.Sprintf("%s runs on %v", vm.Name, hosts)
			}
			elsewhere[vm.Name] = hosts[0]
		}
		return true, ""
	})
	allRunning := time.Since(t0)

	// The evidence, from the event log: every restart names it.
	evs, _, err = client.Events(context.Background(), after, api.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var fencedAt time.Time
	restarted := map[string]string{}
	var order []string
	names := map[string]string{}
	for _, vm := range onVictim {
		names[vm.ID] = vm.Name
	}
	for _, e := range evs {
		switch e.Kind {
		case "fence.succeeded":
			if fencedAt.IsZero() && e.NodeID == node {
				fencedAt = e.Time
			}
		case "ha.restarted":
			if fencedAt.IsZero() && path == "lease" {
				fencedAt = e.Time // the lease's expiry is decided at the first restart
			}
			restarted[names[e.VMID]] = e.Message
			order = append(order, names[e.VMID])
		}
	}
	for _, vm := range onVictim {
		msg, ok := restarted[vm.Name]
		if !ok {
			t.Errorf("no ha.restarted event for %s", vm.Name)
			continue
		}
		want := map[string]string{"lease": "isolation lease expired", "fence": "fence command succeeded"}[path]
		if !strings.Contains(msg, want) {
			t.Errorf("ha.restarted of %s names the wrong evidence (want %q): %s", vm.Name, want, msg)
		}
	}
	t.Logf("restart order: %v; now on: %v", order, elsewhere)
	if fencedAt.IsZero() {
		t.Fatalf("no fence evidence in the event log")
	}

	// The VM without ha stays placed on the dead node: the manual path.
	var p structs.VM
	if err := f.chimeJSON(&p, "vm", "show", plain.Name); err != nil {
		t.Fatal(err)
	}
	if p.NodeID != node {
		t.Errorf("%s (no ha) moved to %s: only ha VMs restart automatically", plain.Name, p.NodeID)
	}
	// Still exactly once a while later.
	holdFor(t, 5*time.Second, "each ha VM on one host", func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, vm := range onVictim {
			hosts, err := whereAlive(ctx, f, vm.ID, victim)
			if err != nil {
				return ""
			}
			if len(hosts) != 1 {
				return fmt.Sprintf("%s runs on %v", vm.Name, hosts)
			}
		}
		return ""
	})
	u.check(t)
	checkHAIncident(t, f, h.Name, path, onVictim, plain, t0)
	t.Logf("AUTO-HA %s path (domain type %s; %s timing: %s heartbeats, 3 missed%s): power loss → unreachable %s, → fenced %s, → all %d ha VMs running elsewhere %s",
		path, lab.DomainType(), tm.name, tm.interval, map[string]string{"lease": ", lease " + lease.String(), "fence": ", fence command labctl power-off"}[path],
		unreachable.Round(100*time.Millisecond), fencedAt.Sub(t0).Round(100*time.Millisecond), len(onVictim), allRunning.Round(100*time.Millisecond))
	return haFigures{unreachable: unreachable, fenced: fencedAt.Sub(t0), elsewhere: allRunning}
}

// whereAlive is fleet.where without the powered-off host (its libvirtd is
// gone): the hosts whose libvirt runs uuid, and the dead host too if a
// qemu process of uuid is left in its namespace (there must be none).
func whereAlive(ctx context.Context, f *fleet, uuid string, dead int) ([]string, error) {
	var hosts []string
	for i, h := range f.lab.Hosts {
		if i == dead {
			procs, err := h.QemuProcesses(ctx)
			if err != nil {
				return nil, err
			}
			if procs[uuid] != 0 {
				hosts = append(hosts, h.Name)
			}
			continue
		}
		running, err := libvirtUUIDs(ctx, h, false)
		if err != nil {
			return nil, err
		}
		if running[uuid] {
			hosts = append(hosts, h.Name)
		}
	}
	return hosts, nil
}

// checkHAIncident: the dead node's incident (docs/incidents.md), read
// through `chime incident list`, is open (the node is still unreachable
// and the VM without ha still placed there), names the restarts and their
// evidence, and has every ha VM recovered on another node; its time to
// detect is the leader's silence bound, within what the test measured.
func checkHAIncident(t *testing.T, f *fleet, nodeName, path string, ha []structs.VM, plain structs.VM, powerLoss time.Time) {
	t.Helper()
	var incs []structs.Incident
	wait.For(t, 30*time.Second, "the incident records every ha VM running again", func() (bool, string) {
		if err := f.chimeJSON(&incs, "incident", "list", "--node", nodeName, "-o", "json"); err != nil {
			return false, err.Error()
		}
		if len(incs) != 1 {
			return false, fmt.Sprintf("%d incidents", len(incs))
		}
		for _, v := range incs[0].VMs {
			if v.HA && v.Outcome != structs.VMRecoveredRunning {
				return false, v.Name + " not recovered"
			}
		}
		return true, ""
	})
	inc := incs[0]
	if inc.State != structs.IncidentOpen || inc.Kind != structs.IncidentNodeUnreachable {
		t.Errorf("incident %d: %s %s, want an open node_unreachable (the node is dead, %s still placed on it)", inc.ID, inc.State, inc.Kind, plain.Name)
	}
	if len(inc.VMs) != len(ha)+1 {
		t.Errorf("incident %d affects %d VMs, want %d (the ha ones and %s)", inc.ID, len(inc.VMs), len(ha)+1, plain.Name)
	}
	kinds := map[string]int{}
	for _, e := range inc.Timeline {
		kinds[e.Kind]++
	}
	if kinds["ha.restarted"] != len(ha) || kinds[structs.IncidentEntryRecovered] != len(ha) {
		t.Errorf("timeline has %d ha.restarted and %d recoveries, want %d each: %v", kinds["ha.restarted"], kinds[structs.IncidentEntryRecovered], len(ha), kinds)
	}
	if path == "fence" && kinds["fence.succeeded"] == 0 {
		t.Errorf("timeline lacks fence.succeeded: %v", kinds)
	}
	var last time.Duration
	for _, v := range inc.VMs {
		if !v.RecoveredAt.IsZero() {
			last = max(last, v.RecoveredAt.Sub(inc.FirstEvidence))
		}
	}
	if inc.TimeToDetect <= 0 || inc.FirstEvidence.Before(powerLoss.Add(-5*time.Second)) {
		t.Errorf("time to detect %s from first evidence %s (power loss at %s)", inc.TimeToDetect, inc.FirstEvidence, powerLoss)
	}
	t.Logf("INCIDENT %d (%s path): time to detect %s (first evidence %s after the power loss), last ha VM recovered %s after the first evidence; %d timeline entries",
		inc.ID, path, inc.TimeToDetect.Round(time.Millisecond), inc.FirstEvidence.Sub(powerLoss).Round(time.Millisecond), last.Round(time.Millisecond), len(inc.Timeline))
}
