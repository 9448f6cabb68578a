package hypervisor

import (
	"errors"
	"fmt"
	"testing"

	libvirt "github.com/digitalocean/go-libvirt"
)

// TestDiskLocked: the start errors of a disk in use elsewhere, as libvirt
// 9.0 reports them (virtlockd's lease refusal, qemu's image lock), are
// recognised, wrapped or not; other start failures are not.
func TestDiskLocked(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"virtlockd lease refused", libvirt.Error{Code: uint32(libvirt.ErrResourceBusy),
			Message: "resource busy: Lockspace resource '04d53d3b9594e7658211629480a01cf52017dddda1f3a7c6e67c67cff4c73786' is locked"}, true},
		{"wrapped lease refusal", fmt.Errorf("create domain: %w", libvirt.Error{Code: uint32(libvirt.ErrResourceBusy),
			Message: "resource busy: Lockspace resource '/srv/images/a.qcow2' is locked"}), true},
		{"qemu image write lock", libvirt.Error{Code: uint32(libvirt.ErrInternalError),
			Message: `internal error: qemu unexpectedly closed the monitor: 2026-12-02T04:06:43.596691Z qemu-system-x86_64: -blockdev {"node-name":"libvirt-1-format"}: Failed to get "write" lock
Is another process using the image [/srv/images/a.qcow2]?`}, true},
		{"resource busy for another reason", libvirt.Error{Code: uint32(libvirt.ErrResourceBusy), Message: "resource busy: device in use"}, false},
		{"missing image", libvirt.Error{Code: uint32(libvirt.ErrInternalError),
			Message: "Cannot access storage file '/srv/images/a.qcow2': No such file or directory"}, false},
		{"not a libvirt error", errors.New(`Failed to get "write" lock`), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := diskLocked(tt.err); got != tt.want {
				t.Fatalf("diskLocked(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
