#!/usr/bin/env bash
# install-deps.sh installs what building and testing chime needs on a fresh
# Debian bookworm machine: libvirt + qemu (libvirt-daemon brings virtlockd,
# the disk lock manager), qemu-utils for qemu-img (the lab's disk images),
# iproute2 and friends for the lab, chromium for the console's browser test,
# prometheus-alertmanager (the real Alertmanager the alarm test pushes to), etcd-server (etcd,
# the reference of issue 14's failover benchmark), stress-ng (its CPU load for the false-positive
# check), and `just`.
# Idempotent: it installs only what is missing. Run as root.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

packages=(
	libvirt-daemon
	libvirt-daemon-driver-qemu
	libvirt-clients
	qemu-system-x86
	qemu-utils
	iproute2
	util-linux
	procps
	ca-certificates
	chromium
	prometheus-alertmanager
	etcd-server
	stress-ng
)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
# npm is needed only to install just. Some machines carry a nodejs build that
# bundles npm and conflicts with Debian's npm package: ask for Debian's only
# when there is no npm command at all.
if ! command -v just >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
	missing+=(nodejs npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	apt-get update
	apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
else
	echo "install-deps: Debian packages present"
fi

# Go is preinstalled at /usr/local/go on these machines.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
	echo "install-deps: go not found (expected at /usr/local/go/bin)" >&2
	exit 1
fi

# just is not in bookworm; the rust-just npm package ships a static binary.
# (Not just-install: that one downloads at install time.)
if ! command -v just >/dev/null 2>&1; then
	echo "install-deps: installing just (npm rust-just)"
	npm install -g rust-just </dev/null
fi
just --version
