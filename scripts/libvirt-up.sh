#!/bin/sh
# libvirt-up.sh starts a root-namespace libvirtd with virtlogd and virtlockd
# on a machine without systemd, as CI and the Justfile need it. Disks are
# locked through virtlockd (qemu.conf lock_manager = "lockd"): libvirt
# refuses to start a disk image another qemu holds. Idempotent: it starts
# only what is not running, and leaves an answering libvirtd alone.
set -eu

# libvirtd refuses to start without a libvirt-qemu user and group.
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /etc/libvirt

if [ ! -e /etc/libvirt/qemu.conf ]; then
	cat >/etc/libvirt/qemu.conf <<'CONF'
user = "root"
group = "root"
security_driver = "none"
CONF
fi
# The lock manager, unless the file already chooses one (an uncommented
# lock_manager line). A libvirtd that already runs reads it at its next start.
if ! grep -q '^[[:space:]]*lock_manager[[:space:]]*=' /etc/libvirt/qemu.conf; then
	printf '%s\n' '# chime: disk leases through virtlockd (docs/install-agent.md)' 'lock_manager = "lockd"' >>/etc/libvirt/qemu.conf
	if virsh -c qemu:///system version >/dev/null 2>&1; then
		echo "libvirt-up: lock_manager = \"lockd\" added to /etc/libvirt/qemu.conf; restart libvirtd to use it" >&2
	fi
fi

# running NAME: the root namespace's NAME runs (its pid file names a live
# process of that name). Not pgrep: lab hosts run their own daemons, and
# dead ones may linger as zombies.
running() {
	pid=$(cat "/run/libvirt/$1.pid" 2>/dev/null) || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
	! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}
mkdir -p /run/libvirt

# virtlockd before libvirtd: a libvirtd with lock_manager = "lockd" refuses
# to start any domain while virtlockd does not answer.
running virtlogd || virtlogd -d -p /run/libvirt/virtlogd.pid
running virtlockd || virtlockd -d -p /run/libvirt/virtlockd.pid

if virsh -c qemu:///system version >/dev/null 2>&1; then
	exit 0
fi
running libvirtd || libvirtd -d -p /run/libvirt/libvirtd.pid

# libvirtd daemonizes before its socket accepts connections: wait for it.
i=0
until virsh -c qemu:///system version >/dev/null 2>&1; do
	i=$((i + 1))
	if [ "$i" -ge 100 ]; then
		echo "libvirt-up: libvirtd does not answer on qemu:///system" >&2
		exit 1
	fi
	sleep 0.1
done
