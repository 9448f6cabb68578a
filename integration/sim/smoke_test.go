package sim

import (
	"fmt"
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	start := time.Now()
	s, err := New(Config{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.E.RunFor(2 * time.Minute)
	if s.Cluster.Leader() == nil {
		t.Fatal("no leader")
	}
	nodes, _ := s.Cluster.Leader().FSM.Nodes()
	if len(nodes) != 3 {
		t.Fatalf("%d nodes", len(nodes))
	}
	for i := 0; i < 4; i++ {
		if err := s.Ops.Create(fmt.Sprintf("vm%d", i), 1, 512, false); err != nil {
			t.Fatal(err)
		}
	}
	s.E.RunFor(2 * time.Minute)
	s.Check.Final()
	n := 0
	for _, h := range s.Hosts {
		n += len(h.HV.Running())
	}
	t.Logf("running %d, trace %d lines, %d steps, took %s", n, s.E.Trace().Lines(), s.E.Steps(), time.Since(start))
	t.Log(s.E.Trace().Tail(40))
	if s.Check.Failed() {
		t.Fatal(s.Check.Violations)
	}
	if n != 4 {
		t.Fatalf("%d running", n)
	}
}
