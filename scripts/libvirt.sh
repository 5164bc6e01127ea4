#!/usr/bin/env bash
# libvirt.sh — the PlasmaVMC test lab's libvirtd, run without systemd (as root).
#
#   scripts/libvirt.sh install        Debian packages (through scripts/deps.sh) + qemu.conf for tests
#   scripts/libvirt.sh start          install if needed, then start `libvirtd -d` unless one answers
#   scripts/libvirt.sh stop           stop the libvirtd this script started (its pidfile); QEMUs stay
#   scripts/libvirt.sh status         exit 0 when the system libvirtd answers on its socket
#   scripts/libvirt.sh host start|fence|uri NAME
#                                     a fake host: one more libvirtd in its own PID + mount namespace
#                                     (own /etc/libvirt with its own host_uuid, /run/libvirt,
#                                     /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt);
#                                     fence kills the namespace's init: its libvirtd and every QEMU
#                                     die at once, like a power-off
#
# Everything is idempotent. The system instance listens on /run/libvirt/libvirt-sock
# (qemu:///system). qemu.conf gets a marked block: QEMU runs as root, with no cgroups, no
# namespaces, no security driver and no virtlogd (stdio_handler=file) — none of which this lab has
# or needs. The first connection after a start probes QEMU's capabilities: about 8 s.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SOCK=/run/libvirt/libvirt-sock
PIDFILE=/run/libvirtd.pid
QEMU_CONF=/etc/libvirt/qemu.conf
MARK='# --- PlasmaVMC test lab (scripts/libvirt.sh)'
HOSTS=${PLASMA_HOSTS:-/tmp/plasma-hosts}

log() { echo "libvirt.sh: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[[ $EUID -eq 0 ]] || die "needs root (libvirtd runs QEMU as root in the test lab)"

install() {
	"$ROOT/scripts/deps.sh"
	[[ -f $QEMU_CONF ]] || die "$QEMU_CONF missing after install (libvirt-daemon-driver-qemu)"
	if ! grep -qF "$MARK" "$QEMU_CONF"; then
		cat >>"$QEMU_CONF" <<EOF

$MARK: no systemd, cgroups, namespaces, security driver or virtlogd ---
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
	fi
}

answers() { # $1: socket
	[[ -S $1 ]] && timeout 60 virsh -c "qemu+unix:///system?socket=$1" version >/dev/null 2>&1
}

start() {
	install
	if answers "$SOCK"; then
		return 0
	fi
	mkdir -p /run/libvirt
	local out
	out=$(mktemp)
	if ! /usr/sbin/libvirtd -d -p "$PIDFILE" >"$out" 2>&1; then
		cat "$out" >&2
		rm -f "$out"
		die "libvirtd -d failed (another libvirtd holding $PIDFILE?)"
	fi
	rm -f "$out"
	local i
	for i in $(seq 100); do
		[[ -S $SOCK ]] && break
		sleep 0.1
	done
	# The first call probes QEMU's capabilities (several seconds on a loaded machine).
	answers "$SOCK" || die "libvirtd started but does not answer on $SOCK"
	log "libvirtd up (pid $(cat "$PIDFILE"))"
}

stop() {
	[[ -f $PIDFILE ]] || return 0
	local pid
	pid=$(cat "$PIDFILE")
	kill "$pid" 2>/dev/null || return 0
	local i
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	die "libvirtd $pid did not exit in 10 s"
}

host() {
	local cmd=${1:?host start|fence|uri NAME} name=${2:?host NAME}
	local h=$HOSTS/$name
	case "$cmd" in
	start)
		install
		if [[ -f $h/init.pid ]] && kill -0 "$(cat "$h/init.pid")" 2>/dev/null && answers "$h/run/libvirt-sock"; then
			cat "$h/init.pid"
			return 0
		fi
		mkdir -p "$h"/{run,lib/qemu,log/qemu,cache,vm}
		if [[ ! -d $h/etc ]]; then
			cp -a /etc/libvirt "$h/etc"
			rm -f "$h"/etc/qemu/*.xml
		fi
		grep -q '^host_uuid' "$h/etc/libvirtd.conf" ||
			echo "host_uuid = \"$(cat /proc/sys/kernel/random/uuid)\"" >>"$h/etc/libvirtd.conf"
		mkdir -p /tmp/vm
		# PID 1 of the namespace: a bash loop that reaps orphans (libvirtd daemonizes QEMU).
		setsid unshare -m -p -f --mount-proc --propagation private bash -c "
			mount --bind $h/etc /etc/libvirt
			mount --bind $h/run /run/libvirt
			mount --bind $h/lib /var/lib/libvirt
			mount --bind $h/log /var/log/libvirt
			mount --bind $h/cache /var/cache/libvirt
			mount --bind $h/vm /tmp/vm
			/usr/sbin/libvirtd -d -p /run/libvirt/libvirtd.pid
			trap '' TERM
			while :; do sleep 3600 & wait \$!; done
		" </dev/null >"$h/init.log" 2>&1 &
		echo $! >"$h/unshare.pid"
		local i init=
		for i in $(seq 100); do
			init=$(cat /proc/"$(cat "$h/unshare.pid")"/task/*/children 2>/dev/null | awk '{print $1}')
			[[ -n $init && -S $h/run/libvirt-sock ]] && break
			sleep 0.1
		done
		[[ -n $init ]] || die "fake host $name did not start (see $h/init.log)"
		echo "$init" >"$h/init.pid"
		answers "$h/run/libvirt-sock" || die "fake host $name: libvirtd does not answer (see $h/init.log)"
		echo "$init"
		;;
	fence)
		[[ -f $h/init.pid ]] || return 0
		kill -9 "$(cat "$h/init.pid")" 2>/dev/null || true
		local i
		for i in $(seq 50); do
			kill -0 "$(cat "$h/unshare.pid")" 2>/dev/null || break
			sleep 0.1
		done
		rm -f "$h/init.pid"
		;;
	uri) echo "qemu+unix:///system?socket=$h/run/libvirt-sock" ;;
	*) die "unknown host command $cmd" ;;
	esac
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) answers "$SOCK" ;;
host)
	shift
	host "$@"
	;;
*)
	echo "usage: $0 install|start|stop|status|host start|fence|uri NAME" >&2
	exit 2
	;;
esac
