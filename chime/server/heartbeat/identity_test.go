package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
)

func TestCheckAnswer(t *testing.T) {
	n := structs.Node{ID: "3f2504e0-4f89-41d3-9a0c-0305e82c3301", Name: "hv1", APIAddr: "10.0.0.11:4660"}
	yes, no := true, false
	for _, tc := range []struct {
		name       string
		nodeID     string
		registered *bool
		wantOK     bool
		conflict   bool
		errHas     string
	}{
		{name: "the node, registered", nodeID: n.ID, registered: &yes, wantOK: true},
		{name: "the node, older agent (does not say)", nodeID: n.ID, wantOK: true},
		{name: "the node's id, not registered (lost data dir)", nodeID: n.ID, registered: &no, errHas: "is not registered"},
		{name: "another node", nodeID: "7c9e6679-7425-40de-944b-e07fc1f90ae7", registered: &yes, conflict: true, errHas: "answered as node 7c9e6679"},
		{name: "another node, not registered", nodeID: "7c9e6679-7425-40de-944b-e07fc1f90ae7", registered: &no, conflict: true, errHas: "not as node hv1"},
		{name: "no node id", nodeID: "", registered: &yes, conflict: true, errHas: "(none)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckAnswer(n, tc.nodeID, tc.registered)
			if tc.wantOK {
				if err != nil {
					t.Fatalf("CheckAnswer = %v, want nil", err)
				}
				return
			}
			ie, ok := identityFailure(err)
			if !ok || ie.Conflict() != tc.conflict || !strings.Contains(err.Error(), tc.errHas) || !strings.Contains(err.Error(), n.APIAddr) {
				t.Fatalf("CheckAnswer = %v; want an IdentityError (conflict %v) naming %s and containing %q", err, tc.conflict, n.APIAddr, tc.errHas)
			}
		})
	}
}

// TestPingBackChecksIdentity: an answer from an agent that is not the
// node's registered one is a failed ping-back even when gossip says the
// member is alive; another node answering also records a conflict (once
// per identityRefresh).
func TestPingBackChecksIdentity(t *testing.T) {
	limit := testMissed * testInterval
	for _, tc := range []struct {
		name         string
		answer       func(n structs.Node) error
		gossipAlive  bool
		wantState    string
		wantConflict bool
	}{
		{name: "lost data dir: unregistered answer, gossip alive", answer: func(n structs.Node) error {
			no := false
			return CheckAnswer(n, n.ID, &no)
		}, gossipAlive: true, wantState: structs.MonitorUnreachable},
		{name: "another node answers", answer: func(n structs.Node) error {
			yes := true
			return CheckAnswer(n, "7c9e6679-7425-40de-944b-e07fc1f90ae7", &yes)
		}, gossipAlive: true, wantState: structs.MonitorUnreachable, wantConflict: true},
		{name: "the node answers", answer: func(n structs.Node) error {
			yes := true
			return CheckAnswer(n, n.ID, &yes)
		}, wantState: structs.MonitorNormal},
		{name: "no answer, gossip alive (unchanged rule)", answer: func(structs.Node) error { return errors.New("connection refused") },
			gossipAlive: true, wantState: structs.MonitorNormal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			n := w.register("hv1")
			w.pinger.errs[n.ID] = tc.answer(n)
			w.gossip.alive[n.ID] = tc.gossipAlive
			w.clock.Advance(limit + time.Millisecond)
			w.props.take()
			w.m.CheckOnce(context.Background())
			got := w.node(n.ID)
			if got.MonitorState != tc.wantState {
				t.Fatalf("monitor state %s, want %s", got.MonitorState, tc.wantState)
			}
			if (got.IdentityConflict != "") != tc.wantConflict {
				t.Fatalf("identity conflict %q, want one: %v", got.IdentityConflict, tc.wantConflict)
			}
			props := w.props.take()
			if tc.wantConflict && props[fsm.CmdNodeIdentity] != 1 {
				t.Fatalf("proposals %v, want one %s", props, fsm.CmdNodeIdentity)
			}
			if tc.wantState == structs.MonitorUnreachable {
				ev, _ := w.f.Events(0, 100)
				last := ev[len(ev)-1]
				if last.Kind != "node.unreachable" || !strings.Contains(last.Message, "gossip: not asked") || !strings.Contains(last.Message, "127.0.0.1:1") {
					t.Fatalf("last event %s: %s", last.Kind, last.Message)
				}
			}
		})
	}
}

// TestRegistrationRefused: from the node's own address (or while it is
// unreachable) a refused registration is an event, at most once per
// identityRefresh; from another address while the node heartbeats, it is
// a conflict.
func TestRegistrationRefused(t *testing.T) {
	for _, tc := range []struct {
		name        string
		addr        string // the registering agent's API address ("": the node's own)
		silent      time.Duration
		unreachable bool
		wantKind    string // event kind
	}{
		{name: "own address, node alive (agent restarted with an empty data dir)", wantKind: "node.registration_refused"},
		{name: "own address, node silent", silent: time.Hour, wantKind: "node.registration_refused"},
		{name: "other address, node alive", addr: "10.0.0.99:4660", wantKind: "node.identity_conflict"},
		{name: "other address, node silent beyond the limit", addr: "10.0.0.99:4660", silent: time.Hour, wantKind: "node.registration_refused"},
		{name: "other address, node unreachable", addr: "10.0.0.99:4660", unreachable: true, wantKind: "node.registration_refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			n := w.register("hv1")
			if tc.unreachable {
				w.must(fsm.CmdSetMonitor, fsm.SetMonitor{NodeID: n.ID, State: structs.MonitorUnreachable, Reason: "test"})
			}
			w.clock.Advance(tc.silent)
			addr := tc.addr
			if addr == "" {
				addr = n.APIAddr
			}
			w.props.take()
			for range 3 { // an agent retrying: recorded once
				w.m.RegistrationRefused(context.Background(), w.node(n.ID), addr)
			}
			if p := w.props.take(); p[fsm.CmdNodeIdentity] != 1 {
				t.Fatalf("proposals %v, want one %s for three refusals", p, fsm.CmdNodeIdentity)
			}
			ev, _ := w.f.Events(0, 100)
			if last := ev[len(ev)-1]; last.Kind != tc.wantKind || !strings.Contains(last.Message, addr) {
				t.Fatalf("last event %s: %s; want %s naming %s", last.Kind, last.Message, tc.wantKind, addr)
			}
			if tc.wantKind == "node.identity_conflict" {
				// Ever new addresses within identityMinGap: still one record.
				for k := range 5 {
					w.m.RegistrationRefused(context.Background(), w.node(n.ID), fmt.Sprintf("10.0.1.%d:4660", k))
				}
				if p := w.props.take(); len(p) != 0 {
					t.Fatalf("proposals for claims from new addresses within %s: %v, want none", identityMinGap, p)
				}
			}
			w.clock.Advance(identityRefresh)
			w.m.RegistrationRefused(context.Background(), w.node(n.ID), addr)
			if p := w.props.take(); p[fsm.CmdNodeIdentity] != 1 {
				t.Fatalf("proposals after identityRefresh %v, want the evidence recorded again", p)
			}
		})
	}
}
