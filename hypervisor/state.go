package hypervisor

import (
	"strconv"

	libvirt "github.com/digitalocean/go-libvirt"
)

// mapState turns libvirt's (state, reason) pair into chime's state and a
// reason string taken from libvirt's reason enum of that state.
func mapState(state, reason int32) (string, string) {
	switch libvirt.DomainState(state) {
	case libvirt.DomainRunning:
		return StateRunning, reasonName(runningReasons, reason)
	case libvirt.DomainBlocked:
		return StateRunning, reasonName(blockedReasons, reason)
	case libvirt.DomainPaused:
		return StateRunning, reasonName(pausedReasons, reason)
	case libvirt.DomainPmsuspended:
		return StateRunning, reasonName(pmsuspendedReasons, reason)
	case libvirt.DomainShutoff:
		r := reasonName(shutoffReasons, reason)
		if libvirt.DomainShutoffReason(reason) == libvirt.DomainShutoffCrashed {
			return StateCrashed, r
		}
		return StateStopped, r
	case libvirt.DomainCrashed:
		return StateCrashed, reasonName(crashedReasons, reason)
	case libvirt.DomainShutdown:
		return StateOther, reasonName(shutdownReasons, reason)
	default:
		return StateOther, reasonName(nil, reason)
	}
}

// isActive reports whether libvirt's state means a qemu process exists.
func isActive(state int32) bool {
	switch libvirt.DomainState(state) {
	case libvirt.DomainRunning, libvirt.DomainBlocked, libvirt.DomainPaused,
		libvirt.DomainPmsuspended, libvirt.DomainShutdown:
		return true
	}
	return false
}

func reasonName(names []string, reason int32) string {
	if reason >= 0 && int(reason) < len(names) {
		return names[reason]
	}
	if reason == 0 {
		return "unknown"
	}
	return "reason-" + strconv.Itoa(int(reason))
}

// Reason tables, indexed by libvirt's virDomain*Reason enums (libvirt-domain.h).
var (
	runningReasons = []string{"unknown", "booted", "migrated", "restored", "from-snapshot",
		"unpaused", "migration-canceled", "save-canceled", "wakeup", "crashed", "postcopy",
		"postcopy-failed"}
	blockedReasons = []string{"unknown"}
	pausedReasons  = []string{"unknown", "user", "migration", "save", "dump", "ioerror",
		"watchdog", "from-snapshot", "shutting-down", "snapshot", "crashed", "starting-up",
		"postcopy", "postcopy-failed", "api-error"}
	shutdownReasons = []string{"unknown", "user"}
	shutoffReasons  = []string{"unknown", "shutdown", "destroyed", "crashed", "migrated",
		"saved", "failed", "from-snapshot", "daemon"}
	crashedReasons     = []string{"unknown", "panicked"}
	pmsuspendedReasons = []string{"unknown"}
)

// eventNames maps virDomainEventType to Event.Detail.
var eventNames = []string{"defined", "undefined", "started", "suspended", "resumed",
	"stopped", "shutdown", "pmsuspended", "crashed"}

// eventDetails maps each virDomainEventType to its detail enum names
// (virDomainEvent*DetailType), which become Event.Reason.
var eventDetails = [][]string{
	{"added", "updated", "renamed", "from-snapshot"},
	{"removed", "renamed"},
	{"booted", "migrated", "restored", "from-snapshot", "wakeup", "recreated"},
	{"paused", "migrated", "ioerror", "watchdog", "restored", "from-snapshot", "api-error",
		"postcopy", "postcopy-failed"},
	{"unpaused", "migrated", "from-snapshot", "postcopy", "postcopy-failed"},
	{"shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot", "recreated"},
	{"finished", "guest", "host"},
	{"memory", "disk"},
	{"panicked", "crashloaded"},
}

// eventNaming returns Event.Detail and Event.Reason for a lifecycle event.
func eventNaming(event, detail int32) (string, string) {
	if event < 0 || int(event) >= len(eventNames) {
		return "event-" + strconv.Itoa(int(event)), "detail-" + strconv.Itoa(int(detail))
	}
	details := eventDetails[event]
	if detail >= 0 && int(detail) < len(details) {
		return eventNames[event], details[detail]
	}
	return eventNames[event], "detail-" + strconv.Itoa(int(detail))
}
