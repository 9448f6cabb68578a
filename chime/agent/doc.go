// Package agent is chime's agent mode: it registers its hypervisor with the
// servers, watches the VMs placed on it, reconciles libvirt towards them and
// reports what it sees in heartbeats. See DESIGN.md for the reconciler's
// invariants (nothing starts before the first sync; stale copies are
// destroyed before anything starts and before the first heartbeat).
package agent
