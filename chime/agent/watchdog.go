package agent

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// deviceWatchdog is a Linux watchdog device (/dev/watchdog, a hardware
// watchdog or the softdog module): opening it arms it, every write pets
// it, writing 'V' before closing disarms it (the magic close; a module
// loaded with nowayout=1 ignores it). It is opened at the first Pet.
type deviceWatchdog struct {
	path    string
	timeout time.Duration // as set on the device (0: not open)
	f       *os.File
}

// newWatchdog checks that the device at path exists; it is opened (armed)
// at the first Pet, with the timeout that Pet gives (WDIOC_SETTIMEOUT,
// whole seconds, rounded down, at least 1).
func newWatchdog(path string) (*deviceWatchdog, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--watchdog: %w", err)
	}
	return &deviceWatchdog{path: path}, nil
}

func (w *deviceWatchdog) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open watchdog: %w", err)
	}
	w.f = f
	return nil
}

// setTimeout sets the device's timeout; a device that refuses it is
// disarmed and closed (the next Pet opens it again).
func (w *deviceWatchdog) setTimeout(timeout time.Duration) error {
	secs := max(int(timeout/time.Second), 1)
	if err := unix.IoctlSetPointerInt(int(w.f.Fd()), unix.WDIOC_SETTIMEOUT, secs); err != nil {
		_, _ = w.f.Write([]byte("V"))
		w.f.Close()
		w.f, w.timeout = nil, 0
		return fmt.Errorf("watchdog: set timeout %ds on %s: %w", secs, w.path, err)
	}
	w.timeout = timeout
	return nil
}

// Pet arms the device (first call), sets its timeout when it changed
// (the servers' margin did), and resets its timer.
func (w *deviceWatchdog) Pet(timeout time.Duration) error {
	if w.f == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	if timeout != w.timeout {
		if err := w.setTimeout(timeout); err != nil {
			return err
		}
	}
	if _, err := w.f.Write([]byte{0}); err != nil {
		return fmt.Errorf("pet watchdog: %w", err)
	}
	return nil
}

// Close disarms the device (magic close) and closes it.
func (w *deviceWatchdog) Close() error {
	if w.f == nil {
		return nil
	}
	_, werr := w.f.Write([]byte("V"))
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close watchdog: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("disarm watchdog: %w", werr)
	}
	return nil
}
