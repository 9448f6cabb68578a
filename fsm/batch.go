package fsm

import (
	"encoding/json"
	"errors"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

var _ raft.BatchingFSM = (*FSM)(nil)

// errFallback abandons a batch's shared transaction: one of its commands
// cannot be applied inside it (refused, not decodable, of an unknown
// type, or a storage fault).
var errFallback = errors.New("apply the batch one command at a time")

// ApplyBatch applies the log entries Raft committed together. Their
// commands are applied in order in one bbolt transaction (one commit
// instead of one per command, which is most of an apply's cost), each
// seeing the writes of those before it, the derived view following each.
// When any of them is refused or cannot be applied, that transaction is
// rolled back, the view put back, and every entry is applied on its own
// (Apply): the refusal is recorded in a transaction of its own, and a
// fault halts the FSM at the right index. Either way the state is the one
// applying the entries one by one leaves, so replicas that batch
// differently agree.
//
// Entries other than commands (configuration changes) change nothing
// here; Apply is not called for them either.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	var cmds []int // positions of the commands
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			cmds = append(cmds, i)
		} else {
			out[i] = &Result{Index: l.Index}
		}
	}
	if len(cmds) > 1 && f.Err() == nil {
		if res, ok := f.applyTogether(logs, cmds); ok {
			for k, i := range cmds {
				out[i] = res[k]
			}
			f.notify(logs[cmds[len(cmds)-1]].Index)
			return out
		}
	}
	for _, i := range cmds {
		out[i] = f.Apply(logs[i])
	}
	return out
}

// applyTogether applies the commands at positions cmds of logs in one
// transaction. ok is false, with nothing applied, when one of them cannot
// be applied inside it.
func (f *FSM) applyTogether(logs []*raft.Log, cmds []int) ([]*Result, bool) {
	res := make([]*Result, 0, len(cmds))
	var undo []func()
	err := f.update(func(btx *bolt.Tx) error {
		for _, i := range cmds {
			l := logs[i]
			var cmd Command
			if err := json.Unmarshal(l.Data, &cmd); err != nil {
				return errFallback
			}
			apply, known := registry[cmd.Type]
			if !known {
				return errFallback
			}
			r, written, _, err := f.applyIn(btx, l.Index, &cmd, apply)
			if err != nil {
				return errFallback
			}
			undo = append(undo, f.derived.ApplyUndoable(written))
			res = append(res, r)
		}
		return nil
	})
	if err != nil {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, false
	}
	return res, true
}
