// Package ports hands tests free TCP ports on an address they own
// (loopback, or an address inside a lab namespace).
//
// One helper for every test that starts real servers: the ports are found by
// listening on port 0 all at once (so they are distinct) and closing again.
package ports

import (
	"net"
	"testing"
)

// Free returns n distinct TCP ports that were free on ip a moment ago.
func Free(t testing.TB, ip string, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("free port on %s: %v", ip, err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
