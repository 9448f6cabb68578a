package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// names recognises what a lab with one prefix created, and nothing of a lab
// with another prefix ("chime" must not match "chimet-hv1").
type names struct {
	netns *regexp.Regexp // netns names
	link  *regexp.Regexp // root-namespace bridges and veths
	dir   *regexp.Regexp // per-host libvirt dirs, as bind-mount roots
	lun   *regexp.Regexp // backing files of CreateLUN's loop devices
}

func namesFor(prefix string) names {
	p := regexp.QuoteMeta(prefix)
	return names{
		netns: regexp.MustCompile(`^` + p + `-hv[0-9]+$`),
		link:  regexp.MustCompile(`^` + p + `(m0|b0|h[0-9]+[mb])$`),
		dir:   regexp.MustCompile(`/` + p + `-hv[0-9]+/((run|lib|etc|log)/libvirt|` + sanSub + `)$`),
		lun:   regexp.MustCompile(`/shared/` + imagesSub + `/` + p + lunInfix + `[a-z0-9._-]+\.img( \(deleted\))?$`),
	}
}

// Cleanup removes everything a lab with this prefix may have left behind
// after a crash: processes in its namespaces or holding its per-host mounts
// (qemu, libvirtd, virtlogd, virtlockd, agents), the namespaces, bridges
// and veths, stale mounts, and the loop devices of its LUNs. Killing
// virtlockd releases the disk leases it held. It is safe when nothing
// exists.
func Cleanup(ctx context.Context, prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("cleanup: bad lab prefix %q", prefix)
	}
	n := namesFor(prefix)
	var errs []error

	nss, err := listNetns(n)
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", prefix, err)
	}
	var pids []int
	for _, ns := range nss {
		p, err := netnsPids("/run/netns/" + ns)
		if err != nil {
			// A netns file that is no longer a mount: nothing to kill in it.
			continue
		}
		pids = append(pids, p...)
	}
	orphans, err := orphanPids(n)
	if err != nil {
		errs = append(errs, err)
	}
	pids = append(pids, orphans...)
	if len(pids) > 0 {
		if err := killPids(ctx, dedup(pids)); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", prefix, err))
		}
	}

	for _, ns := range nss {
		if err := run(ctx, "ip", "netns", "delete", ns); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", prefix, err))
		}
	}

	links, err := listLinks(ctx, n)
	if err != nil {
		errs = append(errs, fmt.Errorf("cleanup %s: %w", prefix, err))
	}
	for _, l := range links {
		// Deleting one end of a veth removes its peer; tolerate that.
		if err := run(ctx, "ip", "link", "delete", l); err != nil && linkExists(ctx, l) {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", prefix, err))
		}
	}

	if err := unmountStale(n); err != nil {
		errs = append(errs, fmt.Errorf("cleanup %s: %w", prefix, err))
	}
	if err := detachLUNs(ctx, n); err != nil {
		errs = append(errs, fmt.Errorf("cleanup %s: %w", prefix, err))
	}
	return errors.Join(errs...)
}

// detachLUNs detaches the loop devices whose backing file is a LUN of the
// prefix (CreateLUN).
func detachLUNs(ctx context.Context, n names) error {
	devs, err := lunDevices(n)
	if err != nil {
		return err
	}
	var errs []error
	for _, dev := range devs {
		if err := run(ctx, "losetup", "--detach", dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// lunDevices lists the loop devices ("/dev/loop3") backed by a LUN file of
// the prefix.
func lunDevices(n names) ([]string, error) {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var devs []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		data, err := os.ReadFile("/sys/block/" + e.Name() + "/loop/backing_file")
		if err != nil {
			continue // not attached
		}
		if n.lun.MatchString(strings.TrimSpace(string(data))) {
			devs = append(devs, "/dev/"+e.Name())
		}
	}
	return devs, nil
}

// Exists reports whether anything of a lab with this prefix (a namespace or
// a link) exists in the root namespace.
func Exists(ctx context.Context, prefix string) (bool, error) {
	if !prefixRE.MatchString(prefix) {
		return false, fmt.Errorf("bad lab prefix %q", prefix)
	}
	n := namesFor(prefix)
	nss, err := listNetns(n)
	if err != nil {
		return false, err
	}
	links, err := listLinks(ctx, n)
	if err != nil {
		return false, err
	}
	return len(nss)+len(links) > 0, nil
}

func listNetns(n names) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var out []string
	for _, e := range entries {
		if n.netns.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// listLinks returns the matching root-namespace links, veths before bridges.
func listLinks(ctx context.Context, n names) ([]string, error) {
	out, err := output(ctx, "ip", "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Ifname string `json:"ifname"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parse links: %w", err)
	}
	var names []string
	for _, l := range links {
		if n.link.MatchString(l.Ifname) {
			names = append(names, l.Ifname)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		bi, bj := strings.HasSuffix(names[i], "0"), strings.HasSuffix(names[j], "0")
		if bi != bj {
			return !bi
		}
		return names[i] < names[j]
	})
	return names, nil
}

func linkExists(ctx context.Context, name string) bool {
	return run(ctx, "ip", "link", "show", "dev", name) == nil
}

// orphanPids finds processes that hold a lab host's bind mounts although
// their namespace is no longer named: daemons and qemu of a lab whose netns
// was deleted under them.
func orphanPids(n names) ([]int, error) {
	var self syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/mnt", &self); err != nil {
		return nil, fmt.Errorf("own mount namespace: %w", err)
	}
	all, err := listPids()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, pid := range all {
		var st syscall.Stat_t
		if !alive(pid) || syscall.Stat("/proc/"+strconv.Itoa(pid)+"/ns/mnt", &st) != nil || (st.Dev == self.Dev && st.Ino == self.Ino) {
			continue
		}
		mounts, err := readMountinfo("/proc/" + strconv.Itoa(pid) + "/mountinfo")
		if err != nil {
			continue
		}
		for _, m := range mounts {
			if n.dir.MatchString(m.root) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// unmountStale detaches lab mounts in our own mount namespace: netns files
// that "ip netns delete" could not remove and per-host dirs bind-mounted
// outside a private namespace.
func unmountStale(n names) error {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		stale := n.dir.MatchString(m.root) || n.dir.MatchString(m.point)
		if strings.HasPrefix(m.point, "/run/netns/") && n.netns.MatchString(strings.TrimPrefix(m.point, "/run/netns/")) {
			stale = true
		}
		if !stale {
			continue
		}
		if err := syscall.Unmount(m.point, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m.point, err))
		}
	}
	return errors.Join(errs...)
}

type mountEntry struct{ root, point string }

func readMountinfo(path string) ([]mountEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		out = append(out, mountEntry{root: unescapeMount(fields[3]), point: unescapeMount(fields[4])})
	}
	return out, sc.Err()
}

// unescapeMount decodes the octal escapes of mountinfo paths (\040 for a
// space and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func dedup(pids []int) []int {
	seen := make(map[int]bool, len(pids))
	var out []int
	for _, p := range pids {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
