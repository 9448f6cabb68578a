#!/usr/bin/env bash
# install-deps.sh installs what building and testing chime needs on a fresh
# Debian bookworm machine: libvirt + qemu (libvirt-daemon brings virtlockd,
# the disk lock manager), qemu-utils for qemu-img (the lab's disk images),
# iproute2 and friends for the lab, chromium for the console's browser test,
# prometheus-alertmanager (the real Alertmanager the alarm test pushes to),
# prometheus (promtool for dist/prometheus, and the real Prometheus the
# integration test scrapes the servers with; Debian enables its own
# prometheus.service, which the tests neither need nor touch), etcd-server (etcd, the
# reference of issue 14's failover benchmark), stress-ng (its CPU load for the false-positive
# check), and `just`
# (npm's static just binary; nodejs and npm first when there is no npm).
# Idempotent: it installs only what is missing, and needs root only then
# (`./run` calls it through sudo when not root).
# Usage: scripts/install-deps.sh [--just-only]   (--just-only: just and what it needs, nothing else)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

just_only=
case "${1:-}" in
"") ;;
--just-only) just_only=1 ;;
*)
	echo "usage: scripts/install-deps.sh [--just-only]" >&2
	exit 2
	;;
esac

# npm_bin puts npm's global bin directory (where `npm install -g` puts
# just) on PATH, for this script and what it runs.
npm_bin() {
	if command -v npm >/dev/null 2>&1; then
		local prefix
		prefix="$(npm prefix -g 2>/dev/null)" || return 0
		case ":$PATH:" in
		*":$prefix/bin:"*) ;;
		*) export PATH="$prefix/bin:$PATH" ;;
		esac
	fi
}
npm_bin

# need_root WHAT: installing WHAT needs root.
need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: installing $1 needs root: run this as root (./run uses sudo)" >&2
		exit 1
	fi
}

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
	prometheus
	etcd-server
	stress-ng
)

if [ -n "$just_only" ]; then
	packages=()
fi
missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
# npm is needed only to install just. Some machines carry a nodejs build that
# bundles npm and conflicts with Debian's npm package: ask for Debian's only
# when there is no npm command at all.
if ! just --version >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
	missing+=(nodejs npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	need_root "${missing[*]}"
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

# just is not in bookworm. npm's rust-just-linux-<cpu> packages ship just
# as a static binary (not just-install: that one downloads at install time;
# not the rust-just wrapper alone: its launcher needs node >= 20, and
# bookworm's nodejs is 18, where `just` then dies of a SyntaxError). The
# binary is linked into /usr/local/bin, on everyone's PATH (sudo's too). A
# just that is there but does not run is replaced. A just installed by
# npm into a global bin directory off PATH is found there (npm_bin).
just_version=1.57.0
just_runs() { just --version >/dev/null 2>&1; }
if ! just_runs; then
	need_root just
	case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
	amd64 | x86_64) just_pkg=rust-just-linux-x64 ;;
	arm64 | aarch64) just_pkg=rust-just-linux-arm64 ;;
	armhf) just_pkg=rust-just-linux-armv7 ;;
	armel) just_pkg=rust-just-linux-arm ;;
	riscv64) just_pkg=rust-just-linux-riscv64 ;;
	loong64) just_pkg=rust-just-linux-loong64 ;;
	*) just_pkg= ;;
	esac
	if [ -n "$just_pkg" ]; then
		echo "install-deps: installing just $just_version (npm $just_pkg, a static binary, linked into /usr/local/bin)"
		npm install -g "$just_pkg@$just_version" </dev/null
		mkdir -p /usr/local/bin
		ln -sf "$(npm root -g)/$just_pkg/bin/just" /usr/local/bin/just
		hash -r
		case ":$PATH:" in *":/usr/local/bin:"*) ;; *) export PATH="/usr/local/bin:$PATH" ;; esac
	else
		echo "install-deps: installing just $just_version (npm rust-just; its launcher needs node >= 20)"
		npm install -g "rust-just@$just_version" </dev/null
		npm_bin
	fi
fi
if ! just_runs; then
	echo "install-deps: just was installed but does not run from PATH ($(command -v just || echo 'not found'); npm prefix -g: $(npm prefix -g 2>/dev/null))" >&2
	exit 1
fi
just --version
