package ports

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeGivesDistinctUsablePorts(t *testing.T) {
	got := Free(t, "127.0.0.1", 5)
	if len(got) != 5 {
		t.Fatalf("got %d ports, want 5", len(got))
	}
	seen := map[int]bool{}
	for _, p := range got {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v: %d is zero or repeated", got, p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d not usable after Free: %v", p, err)
		}
		l.Close()
	}
}
