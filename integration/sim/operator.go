package sim

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/chime-ha/chime/chime/api"
	"github.com/chime-ha/chime/chime/server/endpoint"
	"github.com/chime-ha/chime/chime/structs"
)

// The operator: a machine on the management network ("op") that sends the
// CLI's requests through a client with the servers' addresses. Every
// request and its answer go into the trace; every acknowledged write is
// recorded for invariant 2 (no acknowledged write is lost).

// opMachine is the operator's machine name on the network.
const opMachine = "op"

// Write is one write the operator sent, acknowledged or not.
type Write struct {
	At      time.Time
	Op      string // create, start, stop, delete
	VM      string // the VM's name (the node's, for node actions)
	VMID    string // known once a create was acknowledged
	Desired string // the desired state the write asks for (create, start, stop)
	Task    string // the task an HA operation created
	Flag    string // --confirm-fenced
	Local   string // the host a node-local operation ran on ("": sent to the servers)
	Acked   bool
}

// Lie is an operator's --confirm-fenced for a node whose host was alive:
// it ran a chime qemu at that moment.
type Lie struct {
	Host      string
	At        time.Time
	Corrected time.Time // when a heal corrected it (zero: not yet)
}

// Operator issues operations and records them.
type Operator struct {
	s      *Sim
	c      *client
	Writes []Write
	Lies   []*Lie
	// enabledKnowing records "node id/local drain id" for every
	// acknowledged enable sent while the leader knew that local drain: it
	// should have released it (invariant 3, unreleasedLocalDrain).
	enabledKnowing map[string]bool
}

func newOperator(s *Sim) *Operator { return &Operator{s: s, enabledKnowing: map[string]bool{}} }

func (o *Operator) client() *client {
	if o.c == nil {
		o.c = newClient(o.s, opMachine)
	}
	return o.c
}

func (o *Operator) record(w Write, err error) {
	w.At, w.Acked = o.s.E.Now(), err == nil
	o.Writes = append(o.Writes, w)
	o.s.E.trace.Addf("op", "%s: %s", w, errText(err))
}

// Create creates a VM (desired running unless stopped).
func (o *Operator) Create(name string, vcpus, memMiB int, stopped bool) error {
	vm, err := do(o.client(), "create "+name, true, func(ep *endpoint.Endpoints, reqID string) (*structs.VM, error) {
		return ep.CreateVM(context.Background(), reqID, api.CreateVMRequest{Name: name, VCPUs: vcpus, Memory: memMiB, Stopped: stopped})
	})
	w := Write{Op: "create", VM: name, Desired: structs.DesiredRunning}
	if stopped {
		w.Desired = structs.DesiredStopped
	}
	if err == nil {
		w.VMID = vm.ID
	}
	o.record(w, err)
	return err
}

// CreateHAOfSize creates a running ha VM of the given size (admission
// control may refuse it).
func (o *Operator) CreateHAOfSize(name string, vcpus, memMiB int) error {
	vm, err := do(o.client(), "create "+name, true, func(ep *endpoint.Endpoints, reqID string) (*structs.VM, error) {
		return ep.CreateVM(context.Background(), reqID, api.CreateVMRequest{Name: name, VCPUs: vcpus, Memory: memMiB, HA: true})
	})
	w := Write{Op: "create", VM: name, Flag: "--ha", Desired: structs.DesiredRunning}
	if err == nil {
		w.VMID = vm.ID
	}
	o.record(w, err)
	return err
}

// SetHAArmed is `chime operator ha arm|disarm` on the leader's guard.
func (o *Operator) SetHAArmed(armed bool) error {
	what := "operator ha disarm"
	if armed {
		what = "operator ha arm"
	}
	// The route is the guard's, on the leader (where do delivers fn).
	_, err := do(o.client(), what, true, func(_ *endpoint.Endpoints, reqID string) (struct{}, error) {
		l := o.s.Cluster.leader
		if l == nil || l.lead == nil {
			return struct{}{}, fmt.Errorf("%w: %s: no leader", structs.ErrNoLeader, what)
		}
		_, err := l.lead.guard.SetArmed(context.Background(), reqID, armed, "scenario")
		return struct{}{}, err
	})
	o.record(Write{Op: what}, err)
	return err
}

// SetDesired starts or stops a VM by name.
func (o *Operator) SetDesired(name string, running bool) error {
	op, st := endpoint.VMStop, structs.DesiredStopped
	if running {
		op, st = endpoint.VMStart, structs.DesiredRunning
	}
	_, err := do(o.client(), string(op)+" "+name, true, func(ep *endpoint.Endpoints, reqID string) (*structs.VM, error) {
		return ep.VMAction(context.Background(), reqID, name, op)
	})
	o.record(Write{Op: string(op), VM: name, Desired: st}, err)
	return err
}

// Delete deletes a VM by name.
func (o *Operator) Delete(name string) error {
	_, err := do(o.client(), "delete "+name, true, func(ep *endpoint.Endpoints, reqID string) (struct{}, error) {
		return struct{}{}, ep.DeleteVM(context.Background(), reqID, name)
	})
	o.record(Write{Op: "delete", VM: name}, err)
	return err
}

// Migrate orders a live migration of a VM (to a named node, or where
// placement chooses when to is "").
func (o *Operator) Migrate(name, to string) error {
	t, err := do(o.client(), "migrate "+name, true, func(ep *endpoint.Endpoints, reqID string) (*structs.Task, error) {
		return ep.MigrateVM(context.Background(), reqID, name, to)
	})
	o.record(Write{Op: "migrate", VM: name, Task: taskID(t)}, err)
	return err
}

// NodeAction is enable, disable, drain, evacuate or rebuild of a node (by
// name). A rebuild with confirmFenced while the node's host runs a chime
// qemu is recorded as a lie: the operator confirmed what the world
// contradicts.
func (o *Operator) NodeAction(node string, op endpoint.NodeOp, confirmFenced bool) error {
	knownDrain := ""
	if l := o.s.Cluster.leader; op == endpoint.NodeEnable && l != nil {
		if n, err := l.FSM.ResolveNode(node); err == nil && n.LocalDrainID != "" {
			knownDrain = n.ID + "/" + n.LocalDrainID
		}
	}
	lie := false
	if op == endpoint.NodeRebuild && confirmFenced {
		if h := o.s.Host(node); h != nil {
			for _, q := range h.HV.Running() {
				lie = lie || !q.Foreign
			}
		}
	}
	res, err := do(o.client(), string(op)+" "+node, true, func(ep *endpoint.Endpoints, reqID string) (endpoint.NodeResult, error) {
		return ep.NodeAction(context.Background(), reqID, node, op, confirmFenced)
	})
	w := Write{Op: string(op), VM: node, Task: taskID(res.Task)}
	if confirmFenced {
		w.Flag = "--confirm-fenced"
	}
	o.record(w, err)
	if err == nil && knownDrain != "" {
		o.enabledKnowing[knownDrain] = true
	}
	if lie {
		o.Lies = append(o.Lies, &Lie{Host: node, At: o.s.E.Now()})
		o.s.E.trace.Addf("check", "--confirm-fenced for %s is a lie (its host runs chime VMs): invariant 1 is not checked for its VMs until a heal corrects it", node)
	}
	return err
}

// RemoveNode removes a node (by name).
func (o *Operator) RemoveNode(node string) error {
	_, err := do(o.client(), "remove "+node, true, func(ep *endpoint.Endpoints, reqID string) (struct{}, error) {
		return struct{}{}, ep.RemoveNode(context.Background(), reqID, node)
	})
	o.record(Write{Op: "remove-node", VM: node}, err)
	return err
}

// recordLocal records a node-local operation (run on the node's console,
// through the agent's socket).
func (o *Operator) recordLocal(what, host string, err error) {
	o.Writes = append(o.Writes, Write{At: o.s.E.Now(), Op: what, Local: host, Acked: err == nil})
	o.s.E.trace.Addf("op", "on %s: %s: %s", host, what, errText(err))
}

// String is the write as the CLI would have said it.
func (w Write) String() string {
	if w.Local != "" {
		return "on " + w.Local + ": " + w.Op
	}
	return strings.TrimSpace(w.Op + " " + w.VM + " " + w.Flag)
}

func taskID(t *structs.Task) string {
	if t == nil {
		return ""
	}
	return t.ID
}

// lieActive reports whether an uncorrected (or recently corrected) lie
// about host h exempts it from invariant 1 at now.
func (o *Operator) lieActive(h string, now time.Time) bool {
	if host := o.s.Host(h); host != nil && (host.proc == nil || !host.proc.reg) {
		// The heal has not reached the host's agent yet: it is not
		// running, or the servers do not let it register (a lost state
		// dir before the operator's reset-secret), so it cannot destroy
		// the copies the lie left. The pardon runs from its return.
		for _, l := range o.Lies {
			if l.Host == h {
				l.Corrected = time.Time{}
			}
		}
	}
	for _, l := range o.Lies {
		if l.Host == h && (l.Corrected.IsZero() || now.Sub(l.Corrected) < liePardon) {
			return true
		}
	}
	return false
}

// correctLies marks the lies about host h corrected (a heal reached it).
func (o *Operator) correctLies(h string) {
	for _, l := range o.Lies {
		if l.Host == h && l.Corrected.IsZero() {
			l.Corrected = o.s.E.Now()
			o.s.E.trace.Addf("check", "the --confirm-fenced lie about %s (at %s) is corrected by a heal: invariant 1 applies to its VMs again from %s",
				h, strings.TrimSpace(stamp(l.At.Sub(Epoch))), strings.TrimSpace(stamp(l.Corrected.Add(liePardon).Sub(Epoch))))
		}
	}
}

func (l *Lie) String() string {
	return fmt.Sprintf("lie about %s at %s", l.Host, strings.TrimSpace(stamp(l.At.Sub(Epoch))))
}
