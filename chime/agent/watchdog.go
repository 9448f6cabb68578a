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
// loaded with nowayout=1 ignores it).
type deviceWatchdog struct{ f *os.File }

// openWatchdog opens and arms the watchdog device at path with the given
// timeout (WDIOC_SETTIMEOUT, whole seconds, rounded down, at least 1).
func openWatchdog(path string, timeout time.Duration) (*deviceWatchdog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("--watchdog: %w", err)
	}
	secs := max(int(timeout/time.Second), 1)
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, secs); err != nil {
		_, _ = f.Write([]byte("V"))
		f.Close()
		return nil, fmt.Errorf("--watchdog: set timeout %ds on %s: %w", secs, path, err)
	}
	return &deviceWatchdog{f: f}, nil
}

// Pet resets the device's timer.
func (w *deviceWatchdog) Pet() error {
	if _, err := w.f.Write([]byte{0}); err != nil {
		return fmt.Errorf("pet watchdog: %w", err)
	}
	return nil
}

// Close disarms the device (magic close) and closes it.
func (w *deviceWatchdog) Close() error {
	_, werr := w.f.Write([]byte("V"))
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close watchdog: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("disarm watchdog: %w", werr)
	}
	return nil
}
