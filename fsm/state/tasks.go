package state

import (
	"fmt"
	"sort"

	"github.com/chime-ha/chime/chime/structs"
)

// bucketTasks holds task id → structs.Task JSON. Tasks are not pruned yet.
var bucketTasks = []byte("tasks")

// metaTaskIndex is the key of bucketMeta holding the Raft index of the
// last task write (blocking queries on the task list wait on it).
var metaTaskIndex = []byte("task_index")

// TaskIndex is the Raft index of the last task write.
func (t *Tx) TaskIndex() uint64 { return t.metaCounter(metaTaskIndex) }

// Task returns the task with this id, or nil when there is none.
func (t *Tx) Task(id string) (*structs.Task, error) {
	var task structs.Task
	ok, err := getJSON(t.tx.Bucket(bucketTasks), id, &task)
	if err != nil || !ok {
		return nil, err
	}
	return &task, nil
}

// Tasks lists tasks, newest first.
func (t *Tx) Tasks() ([]structs.Task, error) {
	var out []structs.Task
	err := forEachJSON(t.tx.Bucket(bucketTasks), func(task structs.Task) { out = append(out, task) })
	sort.Slice(out, func(i, j int) bool { return out[i].CreateIndex > out[j].CreateIndex })
	return out, err
}

// PutTask stores a task stamped with the transaction's index and time
// (modify index, updated). Its creation fields are the caller's.
func (t *Tx) PutTask(task *structs.Task) error {
	if task.ID == "" {
		return fmt.Errorf("put task: a task without id")
	}
	task.ModifyIndex, task.Updated = t.index, t.now
	if err := putJSON(t.tx.Bucket(bucketTasks), task.ID, task); err != nil {
		return err
	}
	return t.putMetaCounter(metaTaskIndex, t.index)
}
