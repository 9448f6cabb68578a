#!/bin/sh
# libvirt-up.sh starts a root-namespace libvirtd (with virtlogd) on a machine
# without systemd, as CI and the Justfile need it. Idempotent: it does nothing
# when libvirtd already answers on qemu:///system.
set -eu

if virsh -c qemu:///system version >/dev/null 2>&1; then
	exit 0
fi

# libvirtd refuses to start without a libvirt-qemu user and group.
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt

if [ ! -e /etc/libvirt/qemu.conf ]; then
	mkdir -p /etc/libvirt
	cat >/etc/libvirt/qemu.conf <<'CONF'
user = "root"
group = "root"
security_driver = "none"
CONF
fi

pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d

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
