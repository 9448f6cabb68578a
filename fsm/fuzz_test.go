package fsm

import (
	"bytes"
	"io"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/chime-ha/chime/chime/structs"
)

// The FSM reads the Raft log (command envelopes and their payloads) and
// snapshots (Restore). Fuzzed, neither may panic; the same entries applied
// to two fresh FSMs must give the same state (Apply is deterministic).

const (
	fuzzNode1 = "8b0f7a52-8f0b-4c4e-9f55-2c1b7a3c2d11"
	fuzzNode2 = "1f9a7c0e-55aa-4c1b-9a0e-6d1b2c3d4e5f"
	fuzzVM    = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
)

// fuzzFSM is a fresh FSM with two nodes and a VM placed on the first,
// so that fuzzed commands find something to act on.
func fuzzFSM(t testing.TB) *FSM {
	t.Helper()
	f, err := Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	for i, e := range fuzzSetup(t) {
		if r := f.Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: e}).(*Result); r.Err != nil {
			t.Fatalf("setup entry %d: %v", i, r.Err)
		}
	}
	return f
}

func fuzzSetup(t testing.TB) [][]byte {
	n1 := structs.Node{ID: fuzzNode1, Name: "hv1", APIAddr: "127.0.0.1:4660", VCPUs: 8, MemoryMiB: 16384}
	n2 := structs.Node{ID: fuzzNode2, Name: "hv2", APIAddr: "127.0.0.2:4660", VCPUs: 8, MemoryMiB: 16384}
	v := structs.VM{ID: fuzzVM, Name: "web", DesiredState: structs.DesiredRunning, Spec: structs.VMSpec{VCPUs: 1, MemoryMiB: 64}}
	return [][]byte{
		fuzzCmd(t, "s1", CmdRegisterNode, RegisterNode{Node: n1, SecretHash: "h1"}),
		fuzzCmd(t, "s2", CmdRegisterNode, RegisterNode{Node: n2, SecretHash: "h2"}),
		fuzzCmd(t, "s3", CmdCreateVM, CreateVM{VM: v, NodeID: n1.ID}),
	}
}

func fuzzCmd(t testing.TB, id string, typ CommandType, payload any) []byte {
	b, err := NewCommand(id, typ, t0, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzApply applies fuzzed log entries (one per line) to two fresh FSMs:
// no panic, and the same state on both.
func FuzzApply(f *testing.F) {
	seeds := [][]byte{
		fuzzCmd(f, "a", CmdSetDesired, SetDesired{VMID: fuzzVM, State: structs.DesiredStopped}),
		fuzzCmd(f, "b", CmdPlaceVM, PlaceVM{VMID: fuzzVM, NodeID: fuzzNode2}),
		fuzzCmd(f, "c", CmdDeleteVM, DeleteVM{VMID: fuzzVM}),
		fuzzCmd(f, "d", CmdRemoveNode, RemoveNode{NodeID: fuzzNode2}),
		fuzzCmd(f, "e", CmdEvent, AppendEvent{Event: structs.Event{Kind: structs.EventAudit, Message: "m", Audit: &structs.Audit{Actor: "anonymous", Status: 403}}}),
		[]byte(`{"id":"x","type":"vm.observe","time":"2026-11-25T12:00:00Z","payload":{"node_id":"` + fuzzNode1 + `","vms":[{"vm_id":"` + fuzzVM + `","state":"running","generation":1}]}}`),
		[]byte(`{"id":"x","type":"node.heartbeat","time":"2026-11-25T12:00:00Z","payload":{"node_id":"` + fuzzNode1 + `"}}`),
		[]byte(`{"id":"x","type":"vm.adopt","time":"2026-11-25T12:00:00Z","payload":{"vm_id":"` + fuzzVM + `","node_id":"` + fuzzNode2 + `","generation":1}}`),
		[]byte(`{"id":"x","type":"no.such.type","time":"2026-11-25T12:00:00Z","payload":{}}`),
		[]byte(`{"id":"x","type":"unknown","ignorable":true,"payload":null}`),
		[]byte(`not json`),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add(bytes.Join(seeds[:5], []byte("\n")))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries := bytes.Split(data, []byte("\n"))
		if len(entries) > 16 {
			entries = entries[:16]
		}
		a, b := fuzzFSM(t), fuzzFSM(t)
		base := uint64(len(fuzzSetup(t)))
		for i, e := range entries {
			l := &raft.Log{Index: base + uint64(i) + 1, Term: 1, Type: raft.LogCommand, Data: e}
			ra, rb := a.Apply(l).(*Result), b.Apply(l).(*Result)
			if (ra.Err == nil) != (rb.Err == nil) || ra.ObjectID != rb.ObjectID {
				t.Fatalf("entry %d applied differently on two FSMs: %+v and %+v", i, ra, rb)
			}
		}
		da, err := a.Dump()
		if err != nil {
			t.Fatal(err)
		}
		db, err := b.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(da, db) {
			t.Fatalf("the same entries gave two states")
		}
	})
}

// FuzzRestore restores a fuzzed snapshot (a real one, mutated) into a
// fresh FSM: no panic; a refused snapshot leaves the FSM as it was and
// usable.
func FuzzRestore(f *testing.F) {
	fs := fuzzFSM(f)
	snapBytes := snapshotBytes(f, fs)
	f.Add(snapBytes)
	f.Add([]byte("not a snapshot"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fm := fuzzFSM(t)
		before, err := fm.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if err := fm.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			after, err2 := fm.Dump()
			if err2 != nil {
				t.Fatalf("refused restore (%v) left the FSM unreadable: %v", err, err2)
			}
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("refused restore (%v) changed the state", err)
			}
			return
		}
		// Accepted: the state must be readable through the queries.
		if _, err := fm.Nodes(); err != nil {
			t.Logf("restored state: nodes: %v", err)
		}
		if _, err := fm.Events(0, 100); err != nil {
			t.Logf("restored state: events: %v", err)
		}
	})
}
