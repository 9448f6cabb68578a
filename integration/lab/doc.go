// Package lab builds a multi-host KVM lab on one machine: every hypervisor
// "host" is a network namespace with its own libvirtd (and virtlogd and
// virtlockd), joined to a management and a business bridge in the root
// namespace, and sharing one directory as storage for disk images and the
// disk-lock lockspace.
//
// The bridges own the lab's subnets and no route leads out of a namespace, so
// no lab packet ever leaves the machine. Integration tests and the labctl
// command use it to run chime agents against real libvirt, cut links, kill
// hosts and live-migrate VMs between hosts. It needs root and imports only
// the standard library.
package lab
