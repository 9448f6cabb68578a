package sim

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chime-ha/chime/chime/structs"
	"github.com/chime-ha/chime/fsm"
	"github.com/chime-ha/chime/hypervisor"
)

// Tests of the simulator's own parts: each must be able to fail.

func TestEngineOrder(t *testing.T) {
	e := NewEngine(1)
	var got []string
	e.After(2*time.Second, "", func() { got = append(got, "b1") })
	e.After(time.Second, "", func() { got = append(got, "a") })
	e.After(2*time.Second, "", func() { got = append(got, "b2") })
	c := e.After(2*time.Second, "", func() { got = append(got, "cancelled") })
	c.Cancel()
	e.After(2*time.Second, "", func() {
		got = append(got, "b3")
		e.After(0, "", func() { got = append(got, "b4 (scheduled at 2s, runs at 2s after b3)") })
	})
	e.RunFor(3 * time.Second)
	want := []string{"a", "b1", "b2", "b3", "b4 (scheduled at 2s, runs at 2s after b3)"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if e.Elapsed() != 3*time.Second {
		t.Fatalf("clock at %s after RunFor(3s)", e.Elapsed())
	}
}

func TestNetworkOutcomes(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(n *Network)
		wantErr     error // nil: answered
		wantHandled int   // times handled, once the world ran on
	}{
		{"delivered", func(n *Network) {}, nil, 1},
		{"link down: dropped", func(n *Network) { n.SetLink("b", Mgmt, false) }, ErrUnreachable, 0},
		{"one-way cut a→b: dropped", func(n *Network) { n.Cut("a", "b", Mgmt) }, ErrUnreachable, 0},
		{"one-way cut b→a: handled, answer lost", func(n *Network) { n.Cut("b", "a", Mgmt) }, ErrTimeout, 1},
		{"lost", func(n *Network) { n.SetFaults("a", "b", Mgmt, PathFaults{Loss: 1}) }, ErrTimeout, 0},
		{"answer lost", func(n *Network) { n.SetFaults("a", "b", Mgmt, PathFaults{AnswerLoss: 1}) }, ErrTimeout, 1},
		{"delayed: handled later", func(n *Network) { n.SetFaults("a", "b", Mgmt, PathFaults{Delay: 1, MaxDelay: time.Second}) }, ErrTimeout, 1},
		{"duplicated", func(n *Network) { n.SetFaults("a", "b", Mgmt, PathFaults{Dup: 1, MaxDelay: time.Second}) }, nil, 2},
		{"request kind faults win over the path's", func(n *Network) { n.SetRequestFaults("call", PathFaults{Loss: 1}) }, ErrTimeout, 0},
		{"business cut leaves management alone", func(n *Network) { n.Cut("a", "b", Business) }, nil, 1},
		{"callee process dead", func(n *Network) { n.Listen("b", func() error { return ErrUnreachable }) }, ErrUnreachable, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewEngine(1)
			n := NewNetwork(e)
			n.Listen("a", func() error { return nil })
			n.Listen("b", func() error { return nil })
			tt.setup(n)
			handled := 0
			out, err := Send(n, "a", "b", Mgmt, "call x", func() (string, error) { handled++; return "answer", nil })
			switch {
			case tt.wantErr == nil && (err != nil || out != "answer"):
				t.Fatalf("got %q, %v; want the answer", out, err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			e.RunFor(time.Minute)
			if handled != tt.wantHandled {
				t.Fatalf("handled %d times, want %d", handled, tt.wantHandled)
			}
		})
	}
}

// TestIdealLog: proposals commit only with a majority, every up server
// applies them, a restarted server rebuilds its state and catches up.
func TestIdealLog(t *testing.T) {
	s, err := New(Config{Seed: 7, Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.E.RunFor(5 * time.Second)
	l := s.Cluster.Leader()
	if l == nil {
		t.Fatal("no leader after 5 s")
	}
	var others []*Server
	for _, srv := range s.Cluster.Servers {
		if srv != l {
			others = append(others, srv)
		}
	}
	event := func(msg string) error {
		_, err := l.Propose(context.Background(), "", fsm.CmdEvent, fsm.AppendEvent{Event: structs.Event{Kind: "test", Message: msg}})
		return err
	}
	if err := event("with all three"); err != nil {
		t.Fatalf("propose with a full cluster: %v", err)
	}
	others[0].Crash()
	if err := event("with two"); err != nil {
		t.Fatalf("propose with two of three up: %v", err)
	}
	if others[1].Applied() != l.Applied() {
		t.Fatalf("the up follower applied %d, the leader %d", others[1].Applied(), l.Applied())
	}
	others[1].Crash()
	before := l.Applied()
	if err := event("alone"); !errors.Is(err, errNoQuorum) {
		t.Fatalf("propose without a majority: %v, want %v", err, errNoQuorum)
	}
	if l.Applied() != before {
		t.Fatal("an entry without a majority was applied")
	}
	l.Snapshot()
	for _, srv := range others {
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	s.E.RunFor(3 * time.Second)
	l = s.Cluster.Leader()
	if l == nil {
		t.Fatal("no leader after the restarts")
	}
	want, err := l.FSM.Dump()
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range s.Cluster.Servers {
		got, err := srv.FSM.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("server %s differs from the leader %s: %s", srv.Name, l.Name, dumpDiff(want, got))
		}
	}
}

// TestCheckerCatchesDuplicate plants a second copy of a running VM on
// another host: invariant 1 must be reported at once.
func TestCheckerCatchesDuplicate(t *testing.T) {
	s, err := New(Config{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.E.RunFor(BootTime)
	if err := s.Ops.Create("vm1", 1, 512, false); err != nil {
		t.Fatal(err)
	}
	s.E.RunFor(10 * time.Second)
	src := s.hostRunning("vm1")
	if src == nil || s.Check.Failed() {
		t.Fatalf("vm1 runs on %v, violations %v", src, s.Check.Violations)
	}
	var other *Host
	for _, h := range s.Hosts {
		if h != src {
			other = h
		}
	}
	id := s.vmID("vm1")
	ctx := context.Background()
	s.E.After(0, "plant a copy", func() {
		if err := other.HV.Define(ctx, hypervisor.DomainSpec{VMID: id, Name: "vm1", VCPUs: 1, MemoryMiB: 512, Generation: 1}); err != nil {
			t.Error(err)
		}
		if err := other.HV.Start(ctx, id); err != nil {
			t.Error(err)
		}
	})
	s.E.RunFor(time.Millisecond)
	if len(s.Check.Violations) == 0 || s.Check.Violations[0].Inv != InvUnique {
		t.Fatalf("violations %v, want %s", s.Check.Violations, InvUnique)
	}
}

func TestScheduleRoundTrip(t *testing.T) {
	sc := RandomSchedule(42, RandomConfig{})
	back, err := ParseSchedule(strings.NewReader(sc.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, sc)
	}
	if !reflect.DeepEqual(back, sc) {
		t.Fatalf("round trip differs:\n%s\nvs\n%s", sc, back)
	}
	if _, err := ParseSchedule(strings.NewReader("wait 1s\nfly h1\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("unknown command: %v", err)
	}
}

// TestLocalMigrationGrace is finding 15's rule: the checker's grace for
// the copy an operator's node-local migration brought to its destination
// counts from the later of the migration and the current leader's
// election, so that a migration run while the servers had no quorum is
// not held against the leader elected afterwards before it could hear of
// it, and a copy still unknown to the servers after the grace counts.
func TestLocalMigrationGrace(t *testing.T) {
	limit := 45 * time.Second
	at := func(s int) time.Time { return Epoch.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name                string
		moved, elected, now int
		want                bool
	}{
		{"leader before the migration, within the grace", 100, 10, 140, true},
		{"leader before the migration, grace at its end", 100, 10, 145, true},
		{"leader before the migration, grace over", 100, 10, 146, false},
		{"leader elected after the migration (no quorum), long after it", 100, 400, 430, true},
		{"leader elected after the migration, grace over", 100, 400, 446, false},
		{"elected at the migration", 100, 100, 146, false},
		{"before the migration", 100, 10, 99, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inLocalMigrationGrace(at(tt.moved), at(tt.elected), at(tt.now), limit); got != tt.want {
				t.Errorf("inLocalMigrationGrace(moved %ds, elected %ds, now %ds) = %v, want %v", tt.moved, tt.elected, tt.now, got, tt.want)
			}
		})
	}
}
