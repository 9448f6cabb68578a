package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
)

// DialContext opens a connection from inside the host's network namespace,
// as a process on the host would. Only the socket is created there; the
// returned connection can be used from any goroutine.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(h.NetnsPath(), func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, h.Name, err)
	}
	return conn, nil
}

// Reachable reports whether a TCP connection from the host to addr opens
// within timeout (there is no ping on these machines).
func (h *Host) Reachable(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// inNetns runs fn on an OS thread switched into the network namespace at
// nsPath. The thread stays locked (and is discarded by the runtime when the
// goroutine ends) if it cannot be switched back.
func inNetns(nsPath string, fn func() error) error {
	target, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", nsPath, err)
	}
	fnErr := fn()
	if err := setns(orig); err != nil {
		return errors.Join(fnErr, fmt.Errorf("leave netns %s: %w", nsPath, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

func setns(f *os.File) error {
	_, _, errno := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
