#!/usr/bin/env bash
# deps.sh — install the system packages PlasmaCloud's builds and tests need.
#
#   scripts/deps.sh [EXTRA_PACKAGE...]
#
# Idempotent and quiet: when everything is installed it prints nothing and touches
# nothing. Otherwise it runs `apt-get update` once and installs only what is missing
# (as root, or through sudo). `make test` runs it first, so a fresh Debian 12 machine
# needs nothing but Go and make. Extra package names on the command line are installed
# the same way (scripts/compose-smoke.sh asks for docker-compose).
#
# Services that need more of Debian add their packages to DEBIAN_PACKAGES below, with a
# comment saying which tests use them.
set -euo pipefail

DEBIAN_PACKAGES=(
	# Go's race detector (go test -race) needs cgo, hence a C toolchain.
	gcc
	libc6-dev
	# ChainFire: etcd 3.4 and etcdctl for the compatibility tests and the benchmark peer.
	etcd-server
	etcd-client
	# Fault injection (pkg/harness's Network): network namespaces, veth pairs and delay
	# (ip, tc), partitions and loss (nft), and delay on kernels without tc netem
	# (iptables NFQUEUE rules).
	iproute2
	nftables
	iptables
	# tests/harnesssmoke: busybox httpd and wget run inside network namespaces.
	busybox-static
	# Scripts: readiness probes and JSON output.
	curl
	jq
	# ChainFire's alert rules are checked with promtool (deploy/prometheus/alerts.yml).
	prometheus
	# PlasmaVMC's driver tests (plasmavmc/internal/driver): QEMU (TCG), qemu-img for qcow2
	# overlays, a libvirtd run without systemd (scripts/libvirt.sh), and what scripts/guest.sh
	# needs to build the tiny guest (busybox-static above, cpio, xz; socat for QMP by hand).
	qemu-system-x86
	qemu-utils
	libvirt-daemon-system
	libvirt-daemon-driver-qemu
	libvirt-clients
	cpio
	xz-utils
	socat
)

# Packages whose daemons Debian would start at install time and that must not run:
# tests start their own instances on free ports, and a system etcd would hold 2379,
# the port of `make dev`'s first node.
# libvirtd (and its helpers) likewise: scripts/libvirt.sh runs its own, configured for tests.
NO_AUTOSTART_SERVICES=(etcd prometheus libvirtd virtlogd virtlockd libvirt-guests)

# Go itself comes from go.dev (Debian 12 ships 1.19); the repo needs this one.
GO_MIN_MINOR=26

log() { echo "deps: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

check_go() {
	local go=""
	if command -v go >/dev/null 2>&1; then
		go=$(command -v go)
	elif [[ -x /usr/local/go/bin/go ]]; then
		go=/usr/local/go/bin/go
	else
		die "Go 1.${GO_MIN_MINOR}+ not found (expected in PATH or /usr/local/go/bin); install it from https://go.dev/dl/"
	fi
	local v
	v=$("$go" env GOVERSION) # e.g. go1.26.8
	local minor=${v#go1.}
	minor=${minor%%.*}
	minor=${minor%%[!0-9]*}
	if [[ -z "$minor" || "$minor" -lt "$GO_MIN_MINOR" ]]; then
		die "$go is $v; PlasmaCloud needs go1.${GO_MIN_MINOR} or newer"
	fi
}

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

main() {
	check_go

	local want=("${DEBIAN_PACKAGES[@]}" "$@")
	local missing=()
	local p
	for p in "${want[@]}"; do
		installed "$p" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0

	command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get: install them by hand"

	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}); run as root: apt-get install ${missing[*]}"
		sudo=(sudo)
	fi

	log "installing: ${missing[*]}"

	# Keep package scripts from starting daemons while we install (see
	# NO_AUTOSTART_SERVICES). policy-rc.d is the Debian mechanism for that; we only
	# create it when the machine has none, and remove it whatever happens.
	local policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\n# Temporary, from PlasmaCloud scripts/deps.sh.\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod 755 "$policy"
		# shellcheck disable=SC2064 # expand now: the trap must remove this very file
		trap "${sudo[*]} rm -f $policy" EXIT
	fi

	export DEBIAN_FRONTEND=noninteractive
	local apt=("${sudo[@]}" apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
	"${apt[@]}" update -qq >/dev/null
	"${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

	# On a systemd machine the units are enabled at install time even though they did not
	# start: disable them so they do not come up at the next boot either.
	if [[ -d /run/systemd/system ]]; then
		local s
		for s in "${NO_AUTOSTART_SERVICES[@]}"; do
			if systemctl is-enabled --quiet "$s" 2>/dev/null; then
				log "disabling system service $s (tests run their own)"
				"${sudo[@]}" systemctl disable --now --quiet "$s" || true
			fi
		done
	fi

	for p in "${missing[@]}"; do
		installed "$p" || die "$p did not install"
	done
	log "installed: ${missing[*]}"
}

main "$@"
