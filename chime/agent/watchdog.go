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
	timeout time.Duration
	f       *os.File
}

// newWatchdog checks that the device at path exists; it is opened (armed)
// at the first Pet, with the given timeout (WDIOC_SETTIMEOUT, whole
// seconds, rounded down, at least 1).
func newWatchdog(path string, timeout time.Duration) (*deviceWatchdog, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--watchdog: %w", err)
	}
	return &deviceWatchdog{path: path, timeout: timeout}, nil
}

func (w *deviceWatchdog) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open watchdog: %w", err)
	}
	secs := max(int(w.timeout/time.Second), 1)
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, secs); err != nil {
		_, _ = f.Write([]byte("V"))
		f.Close()
		return fmt.Errorf("watchdog: set timeout %ds on %s: %w", secs, w.path, err)
	}
	w.f = f
	return nil
}

// Pet arms the device (first call) and resets its timer.
func (w *deviceWatchdog) Pet() error {
	if w.f == nil {
		if err := w.open(); err != nil {
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
