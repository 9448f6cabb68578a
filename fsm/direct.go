package fsm

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Direct applies commands to an FSM at consecutive log indexes without
// Raft: one replica, no network. Tests of the decision cores (and the
// simulator) use it as their proposer, so that they drive the real apply
// code with a clock of their own. It is not for production: there is no
// replication and no durability beyond the FSM's own file.
type Direct struct {
	FSM *FSM
	Now func() time.Time // the proposer's clock, stamped into each command

	mu    sync.Mutex
	index uint64
	seq   uint64
}

// NewDirect returns a Direct applier over f whose commands carry now().
func NewDirect(f *FSM, now func() time.Time) *Direct {
	return &Direct{FSM: f, Now: now, index: f.Index()}
}

// Propose encodes and applies one command, as Server.propose does through
// Raft: a refusal comes back both in the result and as the error.
func (d *Direct) Propose(ctx context.Context, reqID string, typ CommandType, payload any) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if reqID == "" {
		d.seq++
		reqID = fmt.Sprintf("direct-%d", d.seq)
	}
	data, err := NewCommand(reqID, typ, d.Now(), payload)
	if err != nil {
		return nil, err
	}
	d.index++
	res, ok := d.FSM.Apply(&raft.Log{Index: d.index, Term: 1, Type: raft.LogCommand, Data: data}).(*Result)
	if !ok {
		return nil, fmt.Errorf("apply %s: unexpected response", typ)
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}
