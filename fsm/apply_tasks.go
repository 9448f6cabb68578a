package fsm

import (
	"fmt"

	"github.com/chime-ha/chime/chime/structs"
)

// Apply functions of tasks, free-standing events and alarms.

func (a *applier) putTask(p PutTask) (string, error) {
	t := p.Task
	old, err := a.tx.Task(t.ID)
	if err != nil {
		return "", err
	}
	if p.IfModifyIndex != 0 && (old == nil || old.ModifyIndex != p.IfModifyIndex) {
		return "", structs.Conflict("task", "task %s changed meanwhile", t.ID)
	}
	if old != nil {
		t.CreateIndex, t.Created = old.CreateIndex, old.Created
	} else {
		t.CreateIndex, t.Created = a.tx.Index(), a.tx.Now()
	}
	if err := a.tx.PutTask(&t); err != nil {
		return "", err
	}
	if old == nil || old.State != t.State {
		return t.ID, a.tx.AppendEvent(structs.Event{Kind: "task." + t.State, NodeID: t.NodeID, VMID: t.VMID, TaskID: t.ID,
			Message: fmt.Sprintf("task %s %s: %s %s", t.Kind, t.ID, t.State, t.Error)})
	}
	return t.ID, nil
}

// taskDestination finds the destination a task's step names for a VM ("" if none).
func (a *applier) taskDestination(taskID, vmID string) (string, error) {
	t, err := a.tx.Task(taskID)
	if err != nil || t == nil {
		return "", err
	}
	for _, st := range t.Steps {
		if st.VMID == vmID {
			return st.To, nil
		}
	}
	return "", nil
}

// updateTaskStep records a step's outcome; the task itself is finished by
// the leader's task runner.
func (a *applier) updateTaskStep(taskID, vmID, state, errMsg string) error {
	if taskID == "" {
		return nil
	}
	t, err := a.tx.Task(taskID)
	if err != nil || t == nil {
		return err
	}
	for i := range t.Steps {
		if t.Steps[i].VMID == vmID && t.Steps[i].State == structs.TaskRunning {
			t.Steps[i].State, t.Steps[i].Error = state, errMsg
		}
	}
	return a.tx.PutTask(t)
}

func (a *applier) appendEvent(p AppendEvent) (string, error) {
	return "", a.tx.AppendEvent(p.Event)
}

func (a *applier) appendEvents(p AppendEvents) (string, error) {
	if len(p.Events) == 0 {
		return "", structs.Invalid("events", "no event to append")
	}
	for _, ev := range p.Events {
		if err := a.tx.AppendEvent(ev); err != nil {
			return "", err
		}
	}
	return "", nil
}

func (a *applier) alarmTransition(p AlarmTransition) (string, error) {
	al := p.Alarm
	rec, err := a.tx.Alarm(al.Fingerprint)
	if err != nil {
		return "", err
	}
	if rec != nil && rec.Alarm.Status == al.Status && rec.Alarm.Fingerprint != "" {
		return al.Fingerprint, nil // no transition
	}
	if err := a.tx.PutAlarm(AlarmRecord{Alarm: al}); err != nil {
		return "", err
	}
	a.alarm = &al
	return al.Fingerprint, a.tx.AppendEvent(structs.Event{Kind: "alarm." + al.Status, NodeID: al.Labels["node_id"],
		Message: fmt.Sprintf("alarm %s %s: %s", al.Name, al.Status, al.Summary)})
}

func (a *applier) alarmDelivered(p AlarmDelivered) (string, error) {
	rec, err := a.tx.Alarm(p.Fingerprint)
	if err != nil {
		return "", err
	}
	if rec == nil || rec.Alarm.Status != p.Status || rec.Delivered {
		return p.Fingerprint, nil // a newer transition replaced it, or already recorded
	}
	rec.Delivered = true
	if rec.Alarm.Status == "resolved" {
		// Delivered resolutions are done with: forget them.
		return p.Fingerprint, a.tx.DeleteAlarm(p.Fingerprint)
	}
	return p.Fingerprint, a.tx.PutAlarm(*rec)
}
