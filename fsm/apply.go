package fsm

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/chime-ha/chime/chime/structs"

	bolt "go.etcd.io/bbolt"
)

// applier applies one command inside one bbolt write transaction.
type applier struct {
	tx    *bolt.Tx
	index uint64
	now   time.Time
}

func (a *applier) dispatch(cmd Command) (string, error) {
	switch cmd.Type {
	case CmdRegisterNode:
		var p RegisterNode
		return decodeThen(cmd, &p, func() (string, error) { return a.registerNode(p) })
	case CmdSetManagement:
		var p SetManagement
		return decodeThen(cmd, &p, func() (string, error) { return a.setManagement(p) })
	case CmdSetMonitor:
		var p SetMonitor
		return decodeThen(cmd, &p, func() (string, error) { return a.setMonitor(p) })
	case CmdSetNodeFlags:
		var p SetNodeFlags
		return decodeThen(cmd, &p, func() (string, error) { return a.setNodeFlags(p) })
	case CmdRemoveNode:
		var p RemoveNode
		return decodeThen(cmd, &p, func() (string, error) { return a.removeNode(p) })
	case CmdCreateVM:
		var p CreateVM
		return decodeThen(cmd, &p, func() (string, error) { return a.createVM(p) })
	case CmdSetDesired:
		var p SetDesired
		return decodeThen(cmd, &p, func() (string, error) { return a.setDesired(p) })
	case CmdPlaceVM:
		var p PlaceVM
		return decodeThen(cmd, &p, func() (string, error) { return a.placeVM(p) })
	case CmdDeleteVM:
		var p DeleteVM
		return decodeThen(cmd, &p, func() (string, error) { return a.deleteVM(p) })
	case CmdObserve:
		var p Observe
		return decodeThen(cmd, &p, func() (string, error) { return a.observe(p) })
	case CmdPutTask:
		var p PutTask
		return decodeThen(cmd, &p, func() (string, error) { return a.putTask(p) })
	case CmdMigrationStart:
		var p MigrationStart
		return decodeThen(cmd, &p, func() (string, error) { return a.migrationStart(p) })
	case CmdMigrationEnd:
		var p MigrationEnd
		return decodeThen(cmd, &p, func() (string, error) { return a.migrationEnd(p) })
	case CmdAdopt:
		var p Adopt
		return decodeThen(cmd, &p, func() (string, error) { return a.adopt(p) })
	case CmdAlarm:
		var p AlarmTransition
		return decodeThen(cmd, &p, func() (string, error) { return a.alarmTransition(p) })
	case CmdAlarmSent:
		var p AlarmDelivered
		return decodeThen(cmd, &p, func() (string, error) { return a.alarmDelivered(p) })
	case CmdEvent:
		var p AppendEvent
		return decodeThen(cmd, &p, func() (string, error) { return "", a.event(p.Event) })
	}
	return "", structs.Invalid("type", "unknown command type %q", cmd.Type)
}

func decodeThen(cmd Command, p any, fn func() (string, error)) (string, error) {
	if err := json.Unmarshal(cmd.Payload, p); err != nil {
		return "", structs.Invalid("payload", "decode %s: %v", cmd.Type, err)
	}
	return fn()
}

// finish records the request id and prunes old ids and events.
func (a *applier) finish(reqID, objID string) error {
	if err := putIndex(a.tx, a.index); err != nil {
		return err
	}
	return a.remember(reqID, applyRecord{Index: a.index, ObjectID: objID})
}

func (a *applier) recordFailure(reqID string, err error) error {
	if perr := putIndex(a.tx, a.index); perr != nil {
		return perr
	}
	e := structs.AsError(err)
	return a.remember(reqID, applyRecord{Index: a.index, Err: e.Message, Kind: structs.KindName(err), Field: e.Field})
}

func (a *applier) remember(reqID string, rec applyRecord) error {
	if reqID == "" {
		return nil
	}
	raw, _ := json.Marshal(rec)
	if err := a.tx.Bucket(bucketRequests).Put([]byte(reqID), raw); err != nil {
		return err
	}
	order := a.tx.Bucket(bucketReqOrder)
	if err := order.Put(u64(a.index), []byte(reqID)); err != nil {
		return err
	}
	// Prune: keep the newest MaxRequests ids. The count lives in meta so
	// that pruning costs O(1) per command.
	meta := a.tx.Bucket(bucketMeta)
	n := getU64(meta.Get([]byte("request_count"))) + 1
	if n > MaxRequests {
		c := order.Cursor()
		if k, v := c.First(); k != nil {
			if err := a.tx.Bucket(bucketRequests).Delete(v); err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			n--
		}
	}
	return meta.Put([]byte("request_count"), u64(n))
}

// --- storage helpers ---

func getJSON(b *bolt.Bucket, key string, v any) (bool, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

func (a *applier) node(id string) (*structs.Node, error) {
	var n structs.Node
	ok, err := getJSON(a.tx.Bucket(bucketNodes), id, &n)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, structs.NotFound("node_id", "node %q not found", id)
	}
	return &n, nil
}

func (a *applier) putNode(n *structs.Node) error {
	n.ModifyIndex = a.index
	return putJSON(a.tx.Bucket(bucketNodes), n.ID, n)
}

func (a *applier) vm(id string) (*structs.VM, error) {
	var v structs.VM
	ok, err := getJSON(a.tx.Bucket(bucketVMs), id, &v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, structs.NotFound("vm_id", "vm %q not found", id)
	}
	return &v, nil
}

func (a *applier) putVM(v *structs.VM) error {
	v.ModifyIndex = a.index
	v.State = v.DeriveState()
	if v.NodeID != "" {
		if err := a.touchNode(v.NodeID); err != nil {
			return err
		}
	}
	return putJSON(a.tx.Bucket(bucketVMs), v.ID, v)
}

// touchNode records that the set of VMs placed on a node changed, which
// wakes that node's agent's blocking query.
func (a *applier) touchNode(nodeID string) error {
	return a.tx.Bucket(bucketNodeIndex).Put([]byte(nodeID), u64(a.index))
}

func byNodeKey(nodeID, vmID string) []byte { return []byte(nodeID + "/" + vmID) }

func (a *applier) event(e structs.Event) error {
	meta := a.tx.Bucket(bucketMeta)
	seq := getU64(meta.Get([]byte("event_seq"))) + 1
	if err := meta.Put([]byte("event_seq"), u64(seq)); err != nil {
		return err
	}
	e.Seq, e.Index = seq, a.index
	if e.Time.IsZero() {
		e.Time = a.now
	}
	b := a.tx.Bucket(bucketEvents)
	if err := putJSON(b, string(u64(seq)), e); err != nil {
		return err
	}
	if seq > MaxEvents {
		return b.Delete(u64(seq - MaxEvents))
	}
	return nil
}

func (a *applier) ev(kind, nodeID, vmID, format string, args ...any) error {
	return a.event(structs.Event{Kind: kind, NodeID: nodeID, VMID: vmID, Message: fmt.Sprintf(format, args...)})
}

// --- nodes ---

func (a *applier) registerNode(p RegisterNode) (string, error) {
	in := p.Node
	if err := structs.ValidateUUID("id", in.ID); err != nil {
		return "", err
	}
	if err := structs.ValidateName("name", in.Name); err != nil {
		return "", err
	}
	names := a.tx.Bucket(bucketNodeNames)
	if owner := names.Get([]byte(in.Name)); owner != nil && string(owner) != in.ID {
		return "", structs.Conflict("name", "node name %q is already used by node %s", in.Name, owner)
	}
	var n structs.Node
	exists, err := getJSON(a.tx.Bucket(bucketNodes), in.ID, &n)
	if err != nil {
		return "", err
	}
	if !exists {
		n = structs.Node{ID: in.ID, CreateIndex: a.index, ManagementState: structs.NodeEnabled,
			MonitorState: structs.MonitorNormal, StateSince: a.now}
	}
	if !exists || p.Rotate {
		if err := a.tx.Bucket(bucketSecrets).Put([]byte(in.ID), []byte(p.SecretHash)); err != nil {
			return "", err
		}
	}
	if exists && n.Name != in.Name {
		if err := names.Delete([]byte(n.Name)); err != nil {
			return "", err
		}
	}
	n.Name, n.APIAddr, n.GossipAddr = in.Name, in.APIAddr, in.GossipAddr
	n.MigrationURI, n.MigrationAddr, n.BusinessInterface = in.MigrationURI, in.MigrationAddr, in.BusinessInterface
	n.VCPUs, n.MemoryMiB, n.Labels, n.AgentVersion = in.VCPUs, in.MemoryMiB, in.Labels, in.AgentVersion
	if err := names.Put([]byte(n.Name), []byte(n.ID)); err != nil {
		return "", err
	}
	if err := a.putNode(&n); err != nil {
		return "", err
	}
	if err := a.touchNode(n.ID); err != nil {
		return "", err
	}
	if exists {
		return n.ID, a.ev("node.reregistered", n.ID, "", "node %s re-registered", n.Name)
	}
	return n.ID, a.ev("node.registered", n.ID, "", "node %s registered (%d vCPUs, %d MiB)", n.Name, n.VCPUs, n.MemoryMiB)
}

func (a *applier) setManagement(p SetManagement) (string, error) {
	switch p.State {
	case structs.NodeEnabled, structs.NodeDisabled, structs.NodeDrained:
	default:
		return "", structs.Invalid("state", "%q must be enabled, disabled or drained", p.State)
	}
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	if n.ManagementState == p.State {
		return n.ID, nil
	}
	old := n.ManagementState
	n.ManagementState = p.State
	if p.State == structs.NodeDrained {
		n.DrainAcked = false
	}
	if p.State == structs.NodeEnabled {
		n.DrainAcked, n.Fenced = false, false
		// Enabling releases the agent's local drain, if any (the agent
		// clears its flag when it sees this id).
		if n.LocalDrainID != "" {
			n.ReleasedDrainID = n.LocalDrainID
		}
	}
	if err := a.putNode(n); err != nil {
		return "", err
	}
	if err := a.touchNode(n.ID); err != nil {
		return "", err
	}
	return n.ID, a.ev("node."+p.State, n.ID, "", "node %s: management state %s → %s", n.Name, old, p.State)
}

func (a *applier) setMonitor(p SetMonitor) (string, error) {
	switch p.State {
	case structs.MonitorNormal, structs.MonitorUnreachable, structs.MonitorError:
	default:
		return "", structs.Invalid("state", "%q must be normal, unreachable or error", p.State)
	}
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	faults := append([]string(nil), p.Faults...)
	sort.Strings(faults)
	if n.MonitorState == p.State && equalStrings(n.Faults, faults) {
		return n.ID, nil
	}
	old := n.MonitorState
	n.MonitorState, n.Faults = p.State, faults
	if old != p.State {
		n.StateSince = a.now
	}
	if err := a.putNode(n); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("node %s: %s → %s", n.Name, old, p.State)
	if len(faults) > 0 {
		msg += fmt.Sprintf(" (faults: %v)", faults)
	}
	if p.Reason != "" {
		msg += ": " + p.Reason
	}
	return n.ID, a.event(structs.Event{Kind: "node." + p.State, NodeID: n.ID, Message: msg})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (a *applier) setNodeFlags(p SetNodeFlags) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	var changes []string
	if p.LocalDrained != nil && n.LocalDrained != *p.LocalDrained {
		n.LocalDrained = *p.LocalDrained
		changes = append(changes, fmt.Sprintf("local_drained=%v", n.LocalDrained))
	}
	if p.DrainAcked != nil && n.DrainAcked != *p.DrainAcked {
		n.DrainAcked = *p.DrainAcked
		changes = append(changes, fmt.Sprintf("drain_acked=%v", n.DrainAcked))
	}
	if p.Fenced != nil && n.Fenced != *p.Fenced {
		n.Fenced = *p.Fenced
		changes = append(changes, fmt.Sprintf("fenced=%v", n.Fenced))
	}
	if p.LocalDrainID != nil && n.LocalDrainID != *p.LocalDrainID {
		n.LocalDrainID = *p.LocalDrainID
		changes = append(changes, fmt.Sprintf("local_drain_id=%q", n.LocalDrainID))
	}
	if len(changes) == 0 {
		return n.ID, nil
	}
	if err := a.putNode(n); err != nil {
		return "", err
	}
	return n.ID, a.ev("node.flags", n.ID, "", "node %s: %v", n.Name, changes)
}

func (a *applier) removeNode(p RemoveNode) (string, error) {
	n, err := a.node(p.NodeID)
	if err != nil {
		return "", err
	}
	c := a.tx.Bucket(bucketVMsByNode).Cursor()
	prefix := []byte(n.ID + "/")
	if k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix) {
		return "", structs.Conflict("node_id", "node %s still has VMs placed on it: drain and rebuild, or migrate them first", n.Name)
	}
	if err := a.tx.Bucket(bucketNodes).Delete([]byte(n.ID)); err != nil {
		return "", err
	}
	if err := a.tx.Bucket(bucketNodeNames).Delete([]byte(n.Name)); err != nil {
		return "", err
	}
	if err := a.tx.Bucket(bucketSecrets).Delete([]byte(n.ID)); err != nil {
		return "", err
	}
	if err := a.touchNode(n.ID); err != nil {
		return "", err
	}
	return n.ID, a.ev("node.removed", n.ID, "", "node %s removed", n.Name)
}

// --- VMs ---

func (a *applier) createVM(p CreateVM) (string, error) {
	v := p.VM
	if err := structs.ValidateUUID("id", v.ID); err != nil {
		return "", err
	}
	if err := structs.ValidateName("name", v.Name); err != nil {
		return "", err
	}
	if err := v.Spec.Validate(); err != nil {
		return "", err
	}
	if v.DesiredState != structs.DesiredRunning && v.DesiredState != structs.DesiredStopped {
		return "", structs.Invalid("desired_state", "%q must be running or stopped", v.DesiredState)
	}
	names := a.tx.Bucket(bucketVMNames)
	if owner := names.Get([]byte(v.Name)); owner != nil {
		return "", structs.Conflict("name", "a VM named %q already exists (%s)", v.Name, owner)
	}
	if a.tx.Bucket(bucketVMs).Get([]byte(v.ID)) != nil {
		return "", structs.Conflict("id", "a VM with id %s already exists", v.ID)
	}
	if p.NodeID != "" {
		if _, err := a.node(p.NodeID); err != nil {
			return "", err
		}
	}
	vm := structs.VM{ID: v.ID, Name: v.Name, Spec: v.Spec, DesiredState: v.DesiredState, CreateIndex: a.index}
	if err := names.Put([]byte(vm.Name), []byte(vm.ID)); err != nil {
		return "", err
	}
	if p.NodeID != "" {
		vm.NodeID, vm.Generation = p.NodeID, a.index
		if err := a.tx.Bucket(bucketVMsByNode).Put(byNodeKey(vm.NodeID, vm.ID), nil); err != nil {
			return "", err
		}
	}
	if err := a.putVM(&vm); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("vm %s created (%d vCPUs, %d MiB, %s)", vm.Name, vm.Spec.VCPUs, vm.Spec.MemoryMiB, vm.DesiredState)
	if vm.NodeID == "" {
		msg += ", pending: no node fits"
	}
	return vm.ID, a.ev("vm.created", vm.NodeID, vm.ID, "%s", msg)
}

func (a *applier) setDesired(p SetDesired) (string, error) {
	if p.State != structs.DesiredRunning && p.State != structs.DesiredStopped {
		return "", structs.Invalid("desired_state", "%q must be running or stopped", p.State)
	}
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if v.DesiredState == p.State {
		return v.ID, nil
	}
	v.DesiredState = p.State
	if err := a.putVM(v); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.desired", v.NodeID, v.ID, "vm %s: desired state %s", v.Name, p.State)
}

func (a *applier) placeVM(p PlaceVM) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if p.IfGeneration != 0 && v.Generation != p.IfGeneration {
		return "", structs.Conflict("generation", "vm %s: placement changed (generation %d, expected %d)", v.Name, v.Generation, p.IfGeneration)
	}
	if v.Migration != nil {
		return "", structs.Conflict("vm_id", "vm %s is being live-migrated (task %s)", v.Name, v.Migration.TaskID)
	}
	if p.NodeID != "" {
		if _, err := a.node(p.NodeID); err != nil {
			return "", err
		}
	}
	old := v.NodeID
	if old != "" {
		if err := a.tx.Bucket(bucketVMsByNode).Delete(byNodeKey(old, v.ID)); err != nil {
			return "", err
		}
		if err := a.touchNode(old); err != nil {
			return "", err
		}
	}
	v.NodeID, v.Generation, v.AdoptGeneration = p.NodeID, a.index, 0
	if p.NodeID != "" {
		if err := a.tx.Bucket(bucketVMsByNode).Put(byNodeKey(p.NodeID, v.ID), nil); err != nil {
			return "", err
		}
	}
	if err := a.putVM(v); err != nil {
		return "", err
	}
	reason := ""
	if p.Reason != "" {
		reason = " (" + p.Reason + ")"
	}
	return v.ID, a.ev("vm.placed", p.NodeID, v.ID, "vm %s placed on node %s (was %s), generation %d%s",
		v.Name, orNone(p.NodeID), orNone(old), v.Generation, reason)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (a *applier) deleteVM(p DeleteVM) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if v.NodeID != "" {
		if err := a.tx.Bucket(bucketVMsByNode).Delete(byNodeKey(v.NodeID, v.ID)); err != nil {
			return "", err
		}
		if err := a.touchNode(v.NodeID); err != nil {
			return "", err
		}
	}
	if err := a.tx.Bucket(bucketVMs).Delete([]byte(v.ID)); err != nil {
		return "", err
	}
	if err := a.tx.Bucket(bucketVMNames).Delete([]byte(v.Name)); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.deleted", v.NodeID, v.ID, "vm %s deleted", v.Name)
}

// observe records what a node's agent reports. An observation only counts
// for a VM placed on that node; a report from elsewhere is a stale copy the
// agent itself destroys, and it is recorded as an event, never as state.
func (a *applier) observe(p Observe) (string, error) {
	if _, err := a.node(p.NodeID); err != nil {
		return "", err
	}
	for _, o := range p.Observations {
		v, err := a.vm(o.VMID)
		if err != nil {
			continue // deleted meanwhile
		}
		current := o.Generation >= v.Generation || (v.AdoptGeneration != 0 && o.Generation == v.AdoptGeneration)
		if v.Migration != nil && v.Migration.To == p.NodeID {
			continue // the incoming copy of a live migration in flight
		}
		if v.NodeID != p.NodeID || !current {
			if o.State == structs.StateRunning {
				if err := a.ev("vm.stale_copy", p.NodeID, v.ID, "vm %s reported running on node %s with generation %d, placed on %s generation %d",
					v.Name, p.NodeID, o.Generation, orNone(v.NodeID), v.Generation); err != nil {
					return "", err
				}
			}
			continue
		}
		prev := v.Observed
		v.Observed = &structs.Observation{NodeID: p.NodeID, State: o.State, Reason: o.Reason, Generation: o.Generation, At: a.now}
		if prev != nil && prev.NodeID == p.NodeID && prev.State == o.State && prev.Reason == o.Reason && prev.Generation == o.Generation {
			continue
		}
		// Observations do not change what the agent must do: write the VM
		// without touching the node's desired-state index.
		v.ModifyIndex = a.index
		v.State = v.DeriveState()
		if err := putJSON(a.tx.Bucket(bucketVMs), v.ID, v); err != nil {
			return "", err
		}
		if prev == nil || prev.State != o.State {
			if err := a.ev("vm."+o.State, p.NodeID, v.ID, "vm %s is %s on node %s (%s)", v.Name, o.State, p.NodeID, o.Reason); err != nil {
				return "", err
			}
		}
	}
	return p.NodeID, nil
}

// --- tasks ---

func (a *applier) putTask(p PutTask) (string, error) {
	t := p.Task
	if t.ID == "" {
		return "", structs.Invalid("id", "task id is required")
	}
	var old structs.Task
	exists, err := getJSON(a.tx.Bucket(bucketTasks), t.ID, &old)
	if err != nil {
		return "", err
	}
	if p.IfModifyIndex != 0 && (!exists || old.ModifyIndex != p.IfModifyIndex) {
		return "", structs.Conflict("task", "task %s changed meanwhile", t.ID)
	}
	if exists {
		t.CreateIndex, t.Created = old.CreateIndex, old.Created
	} else {
		t.CreateIndex, t.Created = a.index, a.now
	}
	t.ModifyIndex, t.Updated = a.index, a.now
	if err := putJSON(a.tx.Bucket(bucketTasks), t.ID, t); err != nil {
		return "", err
	}
	if !exists || old.State != t.State {
		return t.ID, a.event(structs.Event{Kind: "task." + t.State, NodeID: t.NodeID, VMID: t.VMID, TaskID: t.ID,
			Message: fmt.Sprintf("task %s %s: %s %s", t.Kind, t.ID, t.State, t.Error)})
	}
	return t.ID, nil
}

// --- alarms ---

func (a *applier) alarmTransition(p AlarmTransition) (string, error) {
	al := p.Alarm
	if al.Fingerprint == "" || (al.Status != "firing" && al.Status != "resolved") {
		return "", structs.Invalid("alarm", "fingerprint and status firing|resolved are required")
	}
	var rec AlarmRecord
	b := a.tx.Bucket(bucketAlarms)
	if _, err := getJSON(b, al.Fingerprint, &rec); err != nil {
		return "", err
	}
	if rec.Alarm.Status == al.Status && rec.Alarm.Fingerprint != "" {
		return al.Fingerprint, nil // no transition
	}
	if err := putJSON(b, al.Fingerprint, AlarmRecord{Alarm: al}); err != nil {
		return "", err
	}
	return al.Fingerprint, a.event(structs.Event{Kind: "alarm." + al.Status, NodeID: al.Labels["node_id"],
		Message: fmt.Sprintf("alarm %s %s: %s", al.Name, al.Status, al.Summary)})
}

func (a *applier) alarmDelivered(p AlarmDelivered) (string, error) {
	var rec AlarmRecord
	b := a.tx.Bucket(bucketAlarms)
	ok, err := getJSON(b, p.Fingerprint, &rec)
	if err != nil {
		return "", err
	}
	if !ok || rec.Alarm.Status != p.Status || rec.Delivered {
		return p.Fingerprint, nil // a newer transition replaced it, or already recorded
	}
	rec.Delivered = true
	if rec.Alarm.Status == "resolved" {
		// Delivered resolutions are done with: forget them.
		return p.Fingerprint, b.Delete([]byte(p.Fingerprint))
	}
	return p.Fingerprint, putJSON(b, p.Fingerprint, rec)
}

// --- migrations ---

func (a *applier) migrationStart(p MigrationStart) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if v.NodeID == "" {
		return "", structs.Conflict("vm_id", "vm %s is not placed on any node", v.Name)
	}
	if v.Generation != p.IfGeneration {
		return "", structs.Conflict("generation", "vm %s: placement changed (generation %d, expected %d)", v.Name, v.Generation, p.IfGeneration)
	}
	if v.Migration != nil {
		return "", structs.Conflict("vm_id", "vm %s is already migrating (task %s)", v.Name, v.Migration.TaskID)
	}
	if p.To == v.NodeID {
		return "", structs.Invalid("to", "vm %s already runs on node %s", v.Name, p.To)
	}
	if _, err := a.node(p.To); err != nil {
		return "", err
	}
	v.Migration = &structs.Migration{TaskID: p.TaskID, From: v.NodeID, To: p.To, Generation: v.Generation}
	v.TaskID = p.TaskID
	if err := a.putVM(v); err != nil {
		return "", err
	}
	if err := a.touchNode(p.To); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.migrating", v.NodeID, v.ID, "vm %s: live migration %s → %s started (task %s)", v.Name, v.NodeID, p.To, p.TaskID)
}

func (a *applier) migrationEnd(p MigrationEnd) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	m := v.Migration
	to := ""
	if m != nil && (p.TaskID == "" || m.TaskID == p.TaskID) {
		to = m.To
		v.Migration = nil
		if err := a.touchNode(m.To); err != nil {
			return "", err
		}
	} else if m == nil && p.OK {
		// The order was cancelled (timeout) but the agent did migrate: the
		// VM now runs on the destination recorded in the task.
		to = a.taskDestination(p.TaskID, v.ID)
	}
	stepState, stepErr := structs.TaskFailed, p.Error
	switch {
	case p.OK && to != "" && v.Generation == p.Generation && v.NodeID == p.FromNode:
		if err := a.tx.Bucket(bucketVMsByNode).Delete(byNodeKey(v.NodeID, v.ID)); err != nil {
			return "", err
		}
		if err := a.touchNode(v.NodeID); err != nil {
			return "", err
		}
		from := v.NodeID
		v.AdoptGeneration, v.NodeID, v.Generation = p.Generation, to, a.index
		if err := a.tx.Bucket(bucketVMsByNode).Put(byNodeKey(to, v.ID), nil); err != nil {
			return "", err
		}
		// libvirt reported the hand-over done: the VM runs on the
		// destination (its domain still carries the old generation).
		v.Observed = &structs.Observation{NodeID: to, State: structs.StateRunning, Reason: "migrated", Generation: p.Generation, At: a.now}
		stepState, stepErr = structs.TaskSucceeded, ""
		if err := a.ev("vm.migrated", to, v.ID, "vm %s live-migrated %s → %s, generation %d", v.Name, from, to, v.Generation); err != nil {
			return "", err
		}
	case p.OK:
		stepErr = fmt.Sprintf("migration reported done but the placement changed meanwhile (generation %d, reported %d)", v.Generation, p.Generation)
		if err := a.ev("vm.migration_conflict", p.FromNode, v.ID, "vm %s: %s", v.Name, stepErr); err != nil {
			return "", err
		}
	default:
		if err := a.ev("vm.migration_failed", p.FromNode, v.ID, "vm %s: live migration failed: %s", v.Name, p.Error); err != nil {
			return "", err
		}
	}
	if v.TaskID == p.TaskID {
		v.TaskID = ""
	}
	if err := a.putVM(v); err != nil {
		return "", err
	}
	return v.ID, a.updateTaskStep(p.TaskID, v.ID, stepState, stepErr)
}

// taskDestination finds the destination a task's step names for a VM.
func (a *applier) taskDestination(taskID, vmID string) string {
	var t structs.Task
	if ok, _ := getJSON(a.tx.Bucket(bucketTasks), taskID, &t); !ok {
		return ""
	}
	for _, st := range t.Steps {
		if st.VMID == vmID {
			return st.To
		}
	}
	return ""
}

// updateTaskStep records a step's outcome; the task itself is finished by
// the leader's task runner.
func (a *applier) updateTaskStep(taskID, vmID, state, errMsg string) error {
	if taskID == "" {
		return nil
	}
	var t structs.Task
	b := a.tx.Bucket(bucketTasks)
	ok, err := getJSON(b, taskID, &t)
	if err != nil || !ok {
		return err
	}
	for i := range t.Steps {
		if t.Steps[i].VMID == vmID && t.Steps[i].State == structs.TaskRunning {
			t.Steps[i].State, t.Steps[i].Error = state, errMsg
		}
	}
	t.ModifyIndex, t.Updated = a.index, a.now
	return putJSON(b, taskID, t)
}

func (a *applier) adopt(p Adopt) (string, error) {
	v, err := a.vm(p.VMID)
	if err != nil {
		return "", err
	}
	if _, err := a.node(p.NodeID); err != nil {
		return "", err
	}
	if v.NodeID == p.NodeID && v.AdoptGeneration == p.Generation {
		return v.ID, nil // already adopted
	}
	if v.Generation != p.Generation || v.NodeID == "" {
		return "", structs.Conflict("generation", "vm %s: adoption of generation %d refused: the placement is generation %d on node %s",
			v.Name, p.Generation, v.Generation, orNone(v.NodeID))
	}
	if err := a.tx.Bucket(bucketVMsByNode).Delete(byNodeKey(v.NodeID, v.ID)); err != nil {
		return "", err
	}
	if err := a.touchNode(v.NodeID); err != nil {
		return "", err
	}
	from := v.NodeID
	v.AdoptGeneration, v.NodeID, v.Generation, v.Migration = p.Generation, p.NodeID, a.index, nil
	if err := a.tx.Bucket(bucketVMsByNode).Put(byNodeKey(p.NodeID, v.ID), nil); err != nil {
		return "", err
	}
	if err := a.putVM(v); err != nil {
		return "", err
	}
	return v.ID, a.ev("vm.adopted", p.NodeID, v.ID, "vm %s adopted by node %s after a node-local migration from %s, generation %d", v.Name, p.NodeID, from, v.Generation)
}
