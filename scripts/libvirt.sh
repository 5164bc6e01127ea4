#!/usr/bin/env bash
# libvirt.sh — the PlasmaVMC test lab's libvirtd, run without systemd (as root).
#
#   scripts/libvirt.sh install        Debian packages (through scripts/deps.sh) + qemu.conf for tests
#   scripts/libvirt.sh start          install if needed, then start `libvirtd -d` unless one answers
#   scripts/libvirt.sh stop           stop the libvirtd this script started (its pidfile); QEMUs stay
#   scripts/libvirt.sh status         exit 0 when the system libvirtd answers on its socket
#   scripts/libvirt.sh host start|fence|uri|cgroup|remove NAME
#                                     a fake host: one more libvirtd in its own PID + mount namespace
#                                     (own /etc/libvirt with its own host_uuid, /run/libvirt,
#                                     /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt), in
#                                     its own cgroup v2 and with its own QEMU migration port range;
#                                     fence kills the namespace's init and every process of the
#                                     host's cgroup: its libvirtd and every QEMU (and an agent moved
#                                     into the cgroup) die at once, like a power-off; the emptied
#                                     cgroup is removed (start makes a new one);
#                                     uri prints its libvirt URI (also the p2p migration URI);
#                                     cgroup prints its cgroup v2 directory (write a pid into its
#                                     cgroup.procs to make a process part of the host);
#                                     remove fences, heals, and deletes the host's files and cgroup
#   scripts/libvirt.sh host isolate NAME PORT...
#   scripts/libvirt.sh host heal NAME
#                                     isolate drops TCP from the host's cgroup to these local ports
#                                     (nftables table inet plasma_hosts, one chain per host, matching
#                                     socket cgroupv2 on output; replaces an earlier isolate of the
#                                     host); heal removes the host's chain
#
# Fake hosts share the machine's network namespace, so each gets its own QEMU migration port
# range in its qemu.conf copy: 32 ports from 61000 up (above the kernel's ephemeral range and the
# system libvirtd's 49152-49215), an index allocated under a lock and kept in NAME/migration-ports.
# libvirt refuses a loopback migration_address/migration_host, so the driver's Migrate asks for
# tcp://127.0.0.1 per migration when the destination URI is a local socket. The source libvirtd
# of a peer-to-peer migration reaches the destination's socket under /tmp/plasma-hosts, which
# every mount namespace shares.
#
# A socket belongs to the cgroup of the process that created it: a process moved into a host's
# cgroup keeps its older connections outside the cut. Start it in the cgroup (Go:
# SysProcAttr{UseCgroupFD: true, CgroupFD: <open cgroup dir>}, or a shell that writes $$ into
# cgroup.procs and execs) so every connection it makes is cut by isolate.
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

# hostlock takes the lock that serializes fake-host set-up (port ranges, cgroup mounts) on fd 8.
hostlock() {
	mkdir -p "$HOSTS"
	exec 8>"$HOSTS/.lock"
	flock 8
}

# cgroot prints the cgroup v2 directory under which every fake host gets its cgroup:
# /sys/fs/cgroup/plasma-hosts, or /sys/fs/cgroup/unified/plasma-hosts on a hybrid hierarchy (v1
# controllers on /sys/fs/cgroup). Not a bind mount elsewhere: libvirtd finds a QEMU's cgroup
# through the cgroup2 mounts and would look in the wrong place (after a libvirtd restart it could
# not reattach to its QEMUs and killed them).
cgroot() {
	if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
		echo /sys/fs/cgroup/plasma-hosts
	elif [[ $(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
		echo /sys/fs/cgroup/unified/plasma-hosts
	else
		die "no cgroup v2 hierarchy (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)"
	fi
}

# mkcg creates cgroup directory $1 (and its parent).
mkcg() {
	hostlock
	mkdir -p "$1"
	flock -u 8
}

# ports prints host directory $1's migration port range "MIN MAX", allocating one the first
# time: 32 ports from 61000 up, the lowest range no other host directory holds.
ports() {
	local h=$1
	if [[ -s $h/migration-ports ]]; then
		cat "$h/migration-ports"
		return 0
	fi
	hostlock
	local used i min
	used=" $(cat "$HOSTS"/*/migration-ports 2>/dev/null | awk '{printf "%s ", $1}' || true)"
	for ((i = 0; i < 140; i++)); do
		min=$((61000 + 32 * i))
		[[ $used == *" $min "* ]] && continue
		echo "$min $((min + 31))" >"$h/migration-ports"
		flock -u 8
		cat "$h/migration-ports"
		return 0
	done
	flock -u 8
	die "no free migration port range for a fake host (140 in use: scripts/libvirt.sh host remove old ones)"
}

FAKE_MARK='# --- PlasmaVMC fake host (scripts/libvirt.sh host)'

# hostconf writes the fake host's own settings into its copy of qemu.conf (replacing an earlier
# block): incoming migrations listen on the host's own port range. (libvirt refuses a loopback
# migration_address or migration_host here; the driver asks for tcp://127.0.0.1 per migration
# when the destination is a local socket.)
hostconf() { # $1: host directory
	local h=$1 conf=$1/etc/qemu.conf min max
	local range
	range=$(ports "$h")
	read -r min max <<<"$range"
	sed -i "\\%^$FAKE_MARK%,\\%^# --- end PlasmaVMC fake host%d" "$conf"
	cat >>"$conf" <<-CONF
		$FAKE_MARK: incoming migrations on ports $min-$max ---
		migration_port_min = $min
		migration_port_max = $max
		# --- end PlasmaVMC fake host ---
	CONF
}

host() {
	local cmd=${1:?host start|fence|uri|cgroup|remove|isolate|heal NAME} name=${2:?host NAME}
	[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad fake host name '$name'"
	local h=$HOSTS/$name cg i
	cg=$(cgroot)/$name
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
		# Warnings and errors to a file (NAME/log/libvirtd.log): a libvirtd that dies says why.
		grep -q '^log_outputs' "$h/etc/libvirtd.conf" ||
			echo 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"' >>"$h/etc/libvirtd.conf"
		hostconf "$h"
		mkcg "$cg"
		mkdir -p /tmp/vm
		# PID 1 of the namespace: a bash loop that reaps orphans (libvirtd daemonizes QEMU). The
		# subshell enters the host's cgroup first, so everything the host runs is in it.
		(
			echo "$BASHPID" >"$cg/cgroup.procs"
			exec setsid unshare -m -p -f --mount-proc --propagation private bash -c "
				mount --bind $h/etc /etc/libvirt
				mount --bind $h/run /run/libvirt
				mount --bind $h/lib /var/lib/libvirt
				mount --bind $h/log /var/log/libvirt
				mount --bind $h/cache /var/cache/libvirt
				mount --bind $h/vm /tmp/vm
				/usr/sbin/libvirtd -d -p /run/libvirt/libvirtd.pid
				trap '' TERM
				while :; do sleep 3600 & wait \$!; done
			"
		) </dev/null >"$h/init.log" 2>&1 &
		echo $! >"$h/unshare.pid"
		local init=
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
		if [[ -f $h/init.pid ]]; then
			kill -9 "$(cat "$h/init.pid")" 2>/dev/null || true
		fi
		# Everything else of the host dies with it (an agent the test moved into its cgroup).
		if [[ -f $cg/cgroup.kill ]]; then
			echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
		fi
		for i in $(seq 50); do
			if [[ -f $h/unshare.pid ]] && kill -0 "$(cat "$h/unshare.pid")" 2>/dev/null; then
				sleep 0.1
			elif [[ -n $(cat "$cg/cgroup.procs" 2>/dev/null) ]]; then
				sleep 0.1
			else
				break
			fi
		done
		rm -f "$h/init.pid"
		# An empty cgroup goes too (start makes a new one); rmdir fails while anything lives.
		rmdir "$cg" 2>/dev/null || true
		;;
	uri) echo "qemu+unix:///system?socket=$h/run/libvirt-sock" ;;
	cgroup)
		mkcg "$cg"
		echo "$cg"
		;;
	isolate)
		shift 2
		(($# > 0)) || die "host isolate NAME PORT...: no port"
		local p
		for p in "$@"; do
			[[ $p =~ ^[0-9]+$ ]] && ((p > 0 && p < 65536)) || die "bad port '$p'"
		done
		mkcg "$cg"
		local set
		set=$(
			IFS=,
			echo "$*"
		)
		# One transaction: the chain exists, holds only this rule. nft resolves the cgroup path
		# relative to /sys/fs/cgroup; level 2 is the depth of plasma-hosts/NAME in the hierarchy.
		nft -f - <<-NFT
			table inet plasma_hosts {}
			add chain inet plasma_hosts h_$name { type filter hook output priority filter; policy accept; }
			flush chain inet plasma_hosts h_$name
			add rule inet plasma_hosts h_$name socket cgroupv2 level 2 "${cg#/sys/fs/cgroup/}" meta l4proto tcp th dport { $set } counter drop
		NFT
		;;
	heal)
		if nft list chain inet plasma_hosts h_$name >/dev/null 2>&1; then
			nft delete chain inet plasma_hosts h_$name
		fi
		;;
	remove)
		host fence "$name"
		host heal "$name"
		for i in $(seq 50); do
			[[ -d $cg ]] || break
			rmdir "$cg" 2>/dev/null && break
			sleep 0.1
		done
		[[ ! -d $cg ]] || log "warning: cgroup $cg still has processes; left in place"
		rm -rf "$h"
		;;
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
	echo "usage: $0 install|start|stop|status|host start|fence|uri|cgroup|remove NAME|host isolate NAME PORT...|host heal NAME" >&2
	exit 2
	;;
esac
