package structs

import (
	"path/filepath"
	"strings"
)

// DefaultStorageRoot is --storage-root's default: where disk images of
// chime's VMs live unless the operator configures other roots.
const DefaultStorageRoot = "/var/lib/chime/images"

// forbiddenRoots may never be a storage root: a root there would let a VM
// be given the host's own files or devices.
var forbiddenRoots = []string{"/", "/dev", "/etc", "/proc", "/sys", "/boot", "/run", "/usr", "/bin", "/sbin", "/lib", "/root", "/var", "/var/lib", "/var/lib/chime"}

// ValidateStorageRoot checks one --storage-root: absolute, clean, and not
// a system directory (nor chime's own /var/lib/chime, which holds its state).
func ValidateStorageRoot(field, root string) error {
	if !filepath.IsAbs(root) || filepath.Clean(root) != root {
		return Invalid(field, "%q must be an absolute, clean path", root)
	}
	for _, f := range forbiddenRoots {
		if root == f {
			return Invalid(field, "%q may not be a storage root (a system or chime directory): give the directory that holds the disk images", root)
		}
	}
	return nil
}

// ValidateDisksUnder checks that every disk lies strictly under one of the
// storage roots and not inside any of the excluded directories (the
// server's data dir: chime's own files). With no roots every disk is
// refused.
func ValidateDisksUnder(field string, disks, roots, excluded []string) error {
	for i, d := range disks {
		if pathUnder(d, excluded) {
			return Invalid(field, "disk %d: %q is one of chime's own files", i, d)
		}
		if !pathUnder(d, roots) {
			if len(roots) == 0 {
				return Invalid(field, "disk %d: %q: this server has no --storage-root, so no disk is allowed", i, d)
			}
			return Invalid(field, "disk %d: %q is not under a storage root (%s)", i, d, strings.Join(roots, ", "))
		}
	}
	return nil
}

// pathUnder reports whether the clean absolute path p lies strictly under
// one of dirs.
func pathUnder(p string, dirs []string) bool {
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}
