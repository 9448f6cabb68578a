package health

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel-log check: disk I/O errors logged by the kernel.

// kmsgPatterns match kernel messages that report a failed disk I/O. The
// group "dev" names the device when the message does.
var kmsgPatterns = []*regexp.Regexp{
	// blk_update_request / print_req_error / end_request
	regexp.MustCompile(`(?:I/O|critical medium|critical target) error, dev (?P<dev>[^\s,]+)`),
	regexp.MustCompile(`Buffer I/O error on dev(?:ice)? (?P<dev>[^\s,]+)`),
	regexp.MustCompile(`EXT[234]-fs error \(device (?P<dev>[^\s)]+)\)`),
	regexp.MustCompile(`XFS \((?P<dev>[^)\s]+)\):.*I/O error`),
	regexp.MustCompile(`BTRFS error \(device (?P<dev>[^\s)]+)`),
	regexp.MustCompile(`Aborting journal on device (?P<dev>[^\s]+?)(?:-\d+)?\.?$`),
	// anything else that says so
	regexp.MustCompile(`I/O error`),
}

// kmsgIgnoredDevices are devices whose errors say nothing about the
// storage VMs use: optical drives and floppies of virtual machines (empty
// drives log I/O errors when probed), and loop devices.
var kmsgIgnoredDevices = regexp.MustCompile(`^(?:sr|fd|loop)\d+(?:p\d+)?$`)

var kmsgDigits = regexp.MustCompile(`\d+`)

// classifyKmsgLine decides whether one /dev/kmsg record
// ("PRIO,SEQ,USEC,FLAGS;MESSAGE") reports a disk I/O error, and returns the
// fault. Only kernel-facility records count: user space cannot log with
// that facility, so nobody can fake a disk error by writing to /dev/kmsg.
func classifyKmsgLine(line string) (fault string, ok bool) {
	prefix, msg, found := strings.Cut(line, ";")
	if !found || strings.HasPrefix(line, " ") {
		return "", false
	}
	prioField, _, _ := strings.Cut(prefix, ",")
	prio, err := strconv.Atoi(prioField)
	if err != nil || prio>>3 != 0 {
		return "", false
	}
	msg = strings.TrimSpace(msg)
	for _, re := range kmsgPatterns {
		m := re.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		if i := re.SubexpIndex("dev"); i > 0 {
			dev := strings.TrimPrefix(m[i], "/dev/")
			if kmsgIgnoredDevices.MatchString(dev) {
				return "", false
			}
			return faultDiskPrefix + dev, true
		}
		// No device named: the message itself, with numbers masked so that
		// repeated lines give the same fault.
		return truncateFault(faultDiskPrefix + kmsgDigits.ReplaceAllString(msg, "N")), true
	}
	return "", false
}

// noteKmsg records one kernel log record.
func (h *Checker) noteKmsg(line string) {
	fault, ok := classifyKmsgLine(line)
	if !ok {
		return
	}
	now := h.cfg.Clock.Now()
	h.mu.Lock()
	_, known := h.diskErrors[fault]
	if !known && len(h.diskErrors) >= maxDiskErrorFaults {
		fault = faultDiskMore
		_, known = h.diskErrors[fault]
	}
	h.diskErrors[fault] = now
	h.mu.Unlock()
	if !known {
		_, msg, _ := strings.Cut(line, ";")
		h.log.Warn("disk I/O error in the kernel log", "fault", fault, "message", msg, "hold", h.cfg.DiskErrorHold.String())
	}
}

// openKmsg opens the kernel log for non-blocking reads from its current
// end, so that messages logged before the agent started do not count.
func openKmsg(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seek to the end of %s: %w", path, err)
	}
	return fd, nil
}

// drainKmsg reads every record available on the non-blocking fd and hands
// each to fn; it returns when none is left. /dev/kmsg returns one record per
// read (buf must hold the largest, 8 KiB); continuation lines (" KEY=VALUE")
// are skipped. Records overwritten before they were read (EPIPE) are lost,
// and reading goes on.
func drainKmsg(fd int, buf []byte, fn func(record string)) error {
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EPIPE), errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("read kernel log: %w", err)
		case n == 0:
			return nil
		}
		for line := range strings.SplitSeq(string(buf[:n]), "\n") {
			if line != "" && !strings.HasPrefix(line, " ") {
				fn(line)
			}
		}
	}
}

func truncateFault(s string) string {
	if len(s) <= maxFaultLen {
		return s
	}
	return s[:maxFaultLen]
}
