package fsm

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/structs"
)

// batchLogs encodes commands as consecutive log entries from index 1.
func batchLogs(t *testing.T, cmds []func() (string, CommandType, any)) []*raft.Log {
	t.Helper()
	var logs []*raft.Log
	for i, c := range cmds {
		id, typ, p := c()
		data, err := NewCommand(id, typ, t0.Add(time.Duration(i)*time.Second), p)
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: data})
	}
	return logs
}

// ApplyBatch leaves the state, the answers and the derived view applying
// the entries one by one leaves: with every command applying, with a
// refusal among them (a lost capacity race inside the batch), with a
// duplicate, and with a configuration entry in between.
func TestApplyBatchEqualsOneByOne(t *testing.T) {
	n := node("hv")
	v := func(name string, vcpus int) structs.VM {
		x := vm(name)
		x.ID = fmt.Sprintf("00000000-0000-4000-8000-%012d", len(name)*1000+vcpus)
		x.Spec.VCPUs = vcpus
		return x
	}
	a, b, c := v("a", 4), v("bb", 4), v("ccc", 1)
	cases := map[string][]func() (string, CommandType, any){
		"all apply": {
			func() (string, CommandType, any) { return "r1", CmdRegisterNode, RegisterNode{Node: n} },
			func() (string, CommandType, any) {
				return "c1", CmdCreateVM, CreateVM{VM: a, NodeID: n.ID, IfFits: &Fit{VCPUs: 8}}
			},
			func() (string, CommandType, any) { return "c3", CmdCreateVM, CreateVM{VM: c} },
			func() (string, CommandType, any) {
				return "d1", CmdSetDesired, SetDesired{VMID: a.ID, State: "stopped"}
			},
		},
		"a lost race in the batch": {
			func() (string, CommandType, any) { return "r1", CmdRegisterNode, RegisterNode{Node: n} },
			func() (string, CommandType, any) {
				return "c1", CmdCreateVM, CreateVM{VM: a, NodeID: n.ID, IfFits: &Fit{VCPUs: 6}}
			},
			func() (string, CommandType, any) {
				return "c2", CmdCreateVM, CreateVM{VM: b, NodeID: n.ID, IfFits: &Fit{VCPUs: 6}}
			},
			func() (string, CommandType, any) {
				return "c3", CmdCreateVM, CreateVM{VM: c, NodeID: n.ID, IfFits: &Fit{VCPUs: 6}}
			},
		},
		"a duplicate": {
			func() (string, CommandType, any) { return "r1", CmdRegisterNode, RegisterNode{Node: n} },
			func() (string, CommandType, any) { return "c1", CmdCreateVM, CreateVM{VM: a, NodeID: n.ID} },
			func() (string, CommandType, any) { return "c1", CmdCreateVM, CreateVM{VM: a, NodeID: n.ID} },
		},
	}
	for name, cmds := range cases {
		t.Run(name, func(t *testing.T) {
			logs := batchLogs(t, cmds)
			// A configuration entry in the middle: nothing for the state.
			logs = append(logs[:2], append([]*raft.Log{{Index: 0, Type: raft.LogConfiguration}}, logs[2:]...)...)
			for i, l := range logs {
				l.Index = uint64(i + 1)
			}
			one, err := Open(filepath.Join(t.TempDir(), "one.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer one.Close()
			all, err := Open(filepath.Join(t.TempDir(), "all.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer all.Close()
			var want []error
			for _, l := range logs {
				if l.Type != raft.LogCommand {
					want = append(want, nil)
					continue
				}
				want = append(want, one.Apply(l).(*Result).Err)
			}
			got := all.ApplyBatch(logs)
			if len(got) != len(logs) {
				t.Fatalf("%d answers for %d entries", len(got), len(logs))
			}
			for i, r := range got {
				res, ok := r.(*Result)
				if !ok {
					t.Fatalf("answer %d is %T", i, r)
				}
				if fmt.Sprint(res.Err) != fmt.Sprint(want[i]) {
					t.Fatalf("entry %d: batch answered %v, one by one %v", i, res.Err, want[i])
				}
			}
			if name == "a lost race in the batch" && !errors.Is(want[3], structs.ErrConflict) {
				t.Fatalf("the second create for the same capacity was not refused: %v", want)
			}
			wd, _ := one.Dump()
			gd, _ := all.Dump()
			if !reflect.DeepEqual(wd, gd) {
				t.Fatalf("batch state differs from one-by-one state:\n%v\n%v", gd, wd)
			}
			checkView(t, all, "batch")
			if all.Index() != one.Index() {
				t.Fatalf("index %d, want %d", all.Index(), one.Index())
			}
		})
	}
}
