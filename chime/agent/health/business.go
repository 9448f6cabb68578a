package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The business network check: the business interface is up and at least
// one probe target answers through it.

// probeResult is the outcome of one TCP connect to a business probe target.
type probeResult struct {
	Target string
	Err    error // nil: connected
}

// linkState is the business interface's state as the kernel reports it.
type linkState struct {
	Up     bool
	Reason string // why not Up, e.g. "interface eth1 is down"
}

// BusinessNet is the network the business check probes through.
type BusinessNet interface {
	// Link reports whether the interface is up (administratively and
	// operationally) and, when it is not, why ("interface eth1 is down").
	Link(iface string) (up bool, reason string)
	// Dial opens a TCP connection to target (HOST:PORT) through iface only
	// and closes it again. A refused connection (syscall.ECONNREFUSED)
	// proves the target reachable.
	Dial(ctx context.Context, iface, target string, timeout time.Duration) error
}

// KernelNet is the host's own network: the interface's flags and a TCP
// connect with the socket bound to the interface.
type KernelNet struct{}

// Link reads the interface's flags.
func (KernelNet) Link(iface string) (bool, string) {
	l := readLink(iface)
	return l.Up, l.Reason
}

// Dial connects through iface (SO_BINDTODEVICE).
func (KernelNet) Dial(ctx context.Context, iface, target string, timeout time.Duration) error {
	return dialThrough(ctx, iface, target, timeout)
}

func (h *Checker) checkBusiness(ctx context.Context) {
	var link linkState
	link.Up, link.Reason = h.cfg.BusinessNet.Link(h.cfg.BusinessInterface)
	var results []probeResult
	if link.Up {
		results = probeTargets(ctx, h.cfg.BusinessNet, h.cfg.BusinessInterface, h.cfg.BusinessProbes, h.cfg.ProbeTimeout)
	}
	fault := businessFault(link, results)
	var failed []string
	for _, r := range results {
		if !probeAnswered(r.Err) {
			failed = append(failed, r.Target+": "+r.Err.Error())
		}
	}
	failing := strings.Join(failed, "; ")
	h.mu.Lock()
	h.business = fault
	// With the link down no target was probed; the fault itself is logged
	// by notifyIfChanged.
	logChange := link.Up && failing != h.failing
	if link.Up {
		h.failing = failing
	}
	h.mu.Unlock()
	switch {
	case !logChange:
	case failing == "":
		h.log.Info("every business probe target answers again")
	case fault == "":
		h.log.Warn("some business probe targets do not answer", "interface", h.cfg.BusinessInterface, "failed", failed)
	default:
		h.log.Warn("no business probe target answers", "interface", h.cfg.BusinessInterface, "failed", failed)
	}
}

// businessFault decides the business-network fault: the interface missing
// or down, or every target failing. Some targets failing is not a fault
// (a single target may be down for maintenance). The reason names the
// kind of error, never the changing error text.
func businessFault(link linkState, results []probeResult) string {
	if !link.Up {
		return faultBusinessPrefix + link.Reason
	}
	if len(results) == 0 {
		return ""
	}
	var kinds []string
	for _, r := range results {
		if probeAnswered(r.Err) {
			return ""
		}
		if k := errKind(r.Err); !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	kind := "mixed errors"
	if len(kinds) == 1 {
		kind = kinds[0]
	}
	return faultBusinessPrefix + "no probe target answered (" + kind + ")"
}

// probeAnswered reports whether a connect attempt proves the target
// reachable. A refused connection does: the target's RST came back over
// the business network, so any port will do as a target.
func probeAnswered(err error) bool {
	return err == nil || errors.Is(err, syscall.ECONNREFUSED)
}

// errKind names the kind of a failed connect in a few stable words.
func errKind(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ENODEV):
		return "no such interface"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "permission denied"
	case errors.As(err, &dnsErr):
		return "name resolution failed"
	}
	return "connect failed"
}

// readLink reads the interface's flags over netlink: administratively up
// (IFF_UP) and operationally up (IFF_RUNNING: carrier, operstate up or
// unknown).
func readLink(name string) linkState {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		if strings.Contains(err.Error(), "no such network interface") {
			return linkState{Reason: "interface " + name + " not found"}
		}
		return linkState{Reason: "interface " + name + ": " + err.Error()}
	}
	switch {
	case ifi.Flags&net.FlagUp == 0:
		return linkState{Reason: "interface " + name + " is down"}
	case ifi.Flags&net.FlagRunning == 0:
		return linkState{Reason: "interface " + name + " has no carrier"}
	}
	return linkState{Up: true}
}

// probeTargets connects to every target in parallel through iface.
func probeTargets(ctx context.Context, bn BusinessNet, iface string, targets []string, timeout time.Duration) []probeResult {
	results := make([]probeResult, len(targets))
	var wg sync.WaitGroup
	for i, target := range targets {
		wg.Go(func() {
			results[i] = probeResult{Target: target, Err: bn.Dial(ctx, iface, target, timeout)}
		})
	}
	wg.Wait()
	return results
}

// dialThrough opens a TCP connection to target with the socket bound to
// iface (SO_BINDTODEVICE, needs CAP_NET_RAW), so that it cannot succeed
// over the management network, and closes it again.
func dialThrough(ctx context.Context, iface, target string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout, Control: func(_, _ string, c syscall.RawConn) error {
		var bindErr error
		if err := c.Control(func(fd uintptr) { bindErr = unix.BindToDevice(int(fd), iface) }); err != nil {
			return err
		}
		if bindErr != nil {
			return fmt.Errorf("bind to %s: %w", iface, bindErr)
		}
		return nil
	}}
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	return conn.Close()
}

// NormalizeProbeTarget turns HOST or HOST:PORT into HOST:PORT (port 22
// when omitted; a bare IPv6 address is a HOST).
func NormalizeProbeTarget(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty target")
	}
	host, port, err := net.SplitHostPort(s)
	switch {
	case err == nil:
	case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"): // [IPv6]
		host, port = s[1:len(s)-1], DefaultBusinessProbePort
	case strings.Count(s, ":") == 0, net.ParseIP(s) != nil: // a name, an IPv4 or a bare IPv6 address
		host, port = s, DefaultBusinessProbePort
	default:
		return "", fmt.Errorf("%q is not HOST or HOST:PORT", s)
	}
	if host == "" {
		return "", fmt.Errorf("%q has no host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not 1-65535", s, port)
	}
	return net.JoinHostPort(host, port), nil
}
