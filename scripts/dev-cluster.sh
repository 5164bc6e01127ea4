#!/usr/bin/env bash
# dev-cluster.sh — run a 3-node ChainFire cluster and one IAM replica on 127.0.0.1 for
# local development.
#
#   scripts/dev-cluster.sh [--fresh]
#
# Starts bin/chainfire three times (cf1, cf2, cf3; client ports 2379/22379/32379, peer
# ports 2380/22380/32380), keeping data and logs in .dev/, waits until every node's
# /readyz answers, then starts bin/iam (iam1 on 127.0.0.1:7001, over the three members)
# with a development master key and bootstrap admin password generated once into
# .dev/iam/, waits for its /readyz, prints the endpoints, an etcdctl example and how to
# log in, then starts bin/watchbus (wb1 on 127.0.0.1:7002, --auth none: development
# only) and waits for its /readyz, then starts the PlasmaVMC controller (bin/plasmavmc
# server on 127.0.0.1:7003, --auth none: development only) and, when run as root, one
# PlasmaVMC agent for this machine (bin/plasmavmc-agent, host "dev1", health on
# 127.0.0.1:7004) over the libvirtd that `scripts/libvirt.sh start` runs, registers the
# tiny guest (scripts/guest.sh) as the images tiny-kernel and tiny-initrd, and prints how
# to boot it; then it stays in the foreground. Ctrl-C (or SIGTERM) shuts everything down
# gracefully and waits for it (VMs keep running: stopping an agent never stops its VMs;
# delete them with `bin/plasmavmc vm delete` first). Data survives a restart of the
# script; --fresh deletes it first (the IAM secrets with it).
#
# Environment:
#   CHAINFIRE_BIN    binary to run (default bin/chainfire; `make build` makes it)
#   CHAINFIRE_FLAGS  extra flags for every node, e.g. "--log-format json"
#   IAM_BIN          IAM binary (default bin/iam); IAM_BIN=none runs ChainFire alone
#   IAM_FLAGS        extra flags for the IAM replica
#   WATCHBUS_BIN     WatchBus binary (default bin/watchbus); WATCHBUS_BIN=none skips it
#   WATCHBUS_FLAGS   extra flags for the WatchBus replica
#   PLASMAVMC_BIN    PlasmaVMC controller binary (default bin/plasmavmc); none skips
#                    PlasmaVMC (controller and agent)
#   PLASMAVMC_FLAGS  extra flags for the controller
#   PLASMAVMC_AGENT_BIN    agent binary (default bin/plasmavmc-agent); none skips the agent
#                          (it is skipped anyway when not run as root: libvirtd runs QEMU
#                          as root in the lab)
#   PLASMAVMC_AGENT_FLAGS  extra flags for the agent
#   PLASMAVMC_LIBVIRT_HOST  empty (default): the system libvirtd (scripts/libvirt.sh start);
#                          NAME: a fake host of its own (scripts/libvirt.sh host start NAME),
#                          so the dev agent never sees domains other tools made
#   DEV_DIR          data and log directory (default .dev)
#   READY_PATH       readiness path (default /readyz)
#   READY_TIMEOUT    seconds to wait for readiness (default 60)
#   STOP_TIMEOUT     seconds between SIGTERM and SIGKILL on shutdown (default 30)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${CHAINFIRE_BIN:-$root/bin/chainfire}
dev=${DEV_DIR:-$root/.dev}
ready_path=${READY_PATH:-/readyz}
ready_timeout=${READY_TIMEOUT:-60}
stop_timeout=${STOP_TIMEOUT:-30}
read -r -a extra_flags <<<"${CHAINFIRE_FLAGS:-}"
iam_bin=${IAM_BIN:-$root/bin/iam}
read -r -a iam_flags <<<"${IAM_FLAGS:-}"
iam_port=7001
watchbus_bin=${WATCHBUS_BIN:-$root/bin/watchbus}
read -r -a watchbus_flags <<<"${WATCHBUS_FLAGS:-}"
watchbus_port=7002
plasmavmc_bin=${PLASMAVMC_BIN:-$root/bin/plasmavmc}
read -r -a plasmavmc_flags <<<"${PLASMAVMC_FLAGS:-}"
plasmavmc_port=7003
agent_bin=${PLASMAVMC_AGENT_BIN:-$root/bin/plasmavmc-agent}
read -r -a agent_flags <<<"${PLASMAVMC_AGENT_FLAGS:-}"
agent_port=7004
libvirt_host=${PLASMAVMC_LIBVIRT_HOST:-}

names=(cf1 cf2 cf3)
client_ports=(2379 22379 32379)
peer_ports=(2380 22380 32380)

log() { echo "dev-cluster: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

fresh=0
for arg in "$@"; do
	case $arg in
	--fresh) fresh=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*) die "unknown argument $arg (see --help)" ;;
	esac
done

[[ -x $bin ]] || die "$bin not found; run \`make build\` first"
command -v curl >/dev/null || die "curl not found; run scripts/deps.sh"
with_iam=1
if [[ $iam_bin == none ]]; then
	with_iam=0
elif [[ ! -x $iam_bin ]]; then
	die "$iam_bin not found; run \`make build\` first (or IAM_BIN=none for ChainFire alone)"
fi
with_watchbus=1
if [[ $watchbus_bin == none ]]; then
	with_watchbus=0
elif [[ ! -x $watchbus_bin ]]; then
	die "$watchbus_bin not found; run \`make build\` first (or WATCHBUS_BIN=none to skip WatchBus)"
fi
with_plasmavmc=1
if [[ $plasmavmc_bin == none ]]; then
	with_plasmavmc=0
elif [[ ! -x $plasmavmc_bin ]]; then
	die "$plasmavmc_bin not found; run \`make build\` first (or PLASMAVMC_BIN=none to skip PlasmaVMC)"
fi
with_agent=$with_plasmavmc
if ((with_agent)) && [[ $agent_bin == none ]]; then
	with_agent=0
elif ((with_agent)) && ((EUID != 0)); then
	log "not root: the PlasmaVMC agent is skipped (the lab's libvirtd runs QEMU as root)"
	with_agent=0
elif ((with_agent)) && [[ ! -x $agent_bin ]]; then
	die "$agent_bin not found; run \`make build\` first (or PLASMAVMC_AGENT_BIN=none to skip the agent)"
fi
ports=("${client_ports[@]}" "${peer_ports[@]}")
if ((with_iam)); then
	ports+=("$iam_port")
fi
if ((with_watchbus)); then
	ports+=("$watchbus_port")
fi
if ((with_plasmavmc)); then
	ports+=("$plasmavmc_port")
fi
if ((with_agent)); then
	ports+=("$agent_port")
fi

# Refuse to start on ports somebody else holds (a system etcd listens on 2379).
for p in "${ports[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "127.0.0.1:$p is already in use (another dev cluster, or a system etcd?): $(ss -Hltnp "sport = :$p" 2>/dev/null | awk '{print $NF}')"
	fi
done

if ((fresh)); then
	log "--fresh: removing $dev"
	rm -rf "$dev"
fi
mkdir -p "$dev"

initial_cluster=""
for i in "${!names[@]}"; do
	initial_cluster+="${initial_cluster:+,}${names[$i]}=http://127.0.0.1:${peer_ports[$i]}"
done
endpoints=""
for p in "${client_ports[@]}"; do
	endpoints+="${endpoints:+,}127.0.0.1:$p"
done

pids=()

# stop sends SIGTERM to every node still running, waits up to STOP_TIMEOUT seconds for
# them to exit, then kills what is left.
stop() {
	trap - INT TERM
	log "stopping (SIGTERM, up to ${stop_timeout}s)..."
	local pid
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	local deadline=$((SECONDS + stop_timeout))
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid did not exit in time; SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	wait 2>/dev/null || true
	log "stopped; data and logs kept in $dev"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

for i in "${!names[@]}"; do
	name=${names[$i]}
	mkdir -p "$dev/$name"
	{
		echo "=== dev-cluster: starting $name at $(date -Is)"
	} >>"$dev/$name.log"
	"$bin" server \
		--name "$name" \
		--data-dir "$dev/$name" \
		--listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
		--advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
		--listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
		--initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
		--initial-cluster "$initial_cluster" \
		--initial-cluster-state new \
		"${extra_flags[@]}" \
		>>"$dev/$name.log" 2>&1 &
	pids+=("$!")
	log "started $name (pid $!), log $dev/$name.log"
done

# dead_node prints the name of a node that has exited, if any.
dead_node() {
	local i
	for i in "${!pids[@]}"; do
		if ! kill -0 "${pids[$i]}" 2>/dev/null; then
			echo "${names[$i]}"
			return 0
		fi
	done
	return 1
}

fail_with_log() {
	local name=$1
	log "$name is not running; last lines of $dev/$name.log:"
	tail -n 40 "$dev/$name.log" >&2 || true
	stop
	exit 1
}

deadline=$((SECONDS + ready_timeout))
for i in "${!names[@]}"; do
	url="http://127.0.0.1:${client_ports[$i]}$ready_path"
	until curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; do
		if dead=$(dead_node); then
			fail_with_log "$dead"
		fi
		if ((SECONDS >= deadline)); then
			log "$url not ready after ${ready_timeout}s; last lines of $dev/${names[$i]}.log:"
			tail -n 40 "$dev/${names[$i]}.log" >&2 || true
			stop
			exit 1
		fi
		sleep 0.3
	done
done

# IAM: one replica over the three members. Its master key and the bootstrap password of
# user admin are development values generated once into $dev/iam (mode 0600).
if ((with_iam)); then
	iam_dir=$dev/iam
	mkdir -p "$iam_dir"
	chmod 0700 "$iam_dir"
	(
		umask 077
		if [[ ! -s $iam_dir/master-key ]]; then
			head -c 32 /dev/urandom | base64 >"$iam_dir/master-key"
		fi
		if [[ ! -s $iam_dir/admin-password ]]; then
			head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$iam_dir/admin-password"
		fi
	)
	echo "=== dev-cluster: starting iam1 at $(date -Is)" >>"$dev/iam1.log"
	"$iam_bin" server \
		--listen "127.0.0.1:$iam_port" \
		--chainfire-endpoints "$endpoints" \
		--master-key-file "$iam_dir/master-key" \
		--bootstrap-admin-password-file "$iam_dir/admin-password" \
		--audit-log "$iam_dir/audit.log" \
		"${iam_flags[@]}" \
		>>"$dev/iam1.log" 2>&1 &
	pids+=("$!")
	names+=(iam1)
	log "started iam1 (pid $!), log $dev/iam1.log"
	url="http://127.0.0.1:$iam_port$ready_path"
	until curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; do
		if dead=$(dead_node); then
			fail_with_log "$dead"
		fi
		if ((SECONDS >= deadline)); then
			log "$url not ready after ${ready_timeout}s; last lines of $dev/iam1.log:"
			tail -n 40 "$dev/iam1.log" >&2 || true
			stop
			exit 1
		fi
		sleep 0.3
	done
fi

# WatchBus: one replica over the three members, without authorization (development only:
# it says so in its log and /readyz).
if ((with_watchbus)); then
	echo "=== dev-cluster: starting wb1 at $(date -Is)" >>"$dev/wb1.log"
	"$watchbus_bin" server \
		--listen "127.0.0.1:$watchbus_port" \
		--chainfire-endpoints "$endpoints" \
		--auth none \
		"${watchbus_flags[@]}" \
		>>"$dev/wb1.log" 2>&1 &
	pids+=("$!")
	names+=(wb1)
	watchbus_pid=$!
	log "started wb1 (pid $!), log $dev/wb1.log"
	url="http://127.0.0.1:$watchbus_port$ready_path"
	until curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; do
		if dead=$(dead_node); then
			fail_with_log "$dead"
		fi
		if ((SECONDS >= deadline)); then
			log "$url not ready after ${ready_timeout}s; last lines of $dev/wb1.log:"
			tail -n 40 "$dev/wb1.log" >&2 || true
			stop
			exit 1
		fi
		sleep 0.3
	done
fi

# wait_ready NAME URL waits for URL to answer 200 (or a node to die, or the deadline).
wait_ready() {
	local name=$1 url=$2
	until curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; do
		if dead=$(dead_node); then
			fail_with_log "$dead"
		fi
		if ((SECONDS >= deadline)); then
			log "$url not ready after ${ready_timeout}s; last lines of $dev/$name.log:"
			tail -n 40 "$dev/$name.log" >&2 || true
			stop
			exit 1
		fi
		sleep 0.3
	done
}

# PlasmaVMC: the controller (one replica, --auth none: development only) and, as root, an
# agent for this machine over the lab libvirtd, with the tiny guest registered as images.
if ((with_plasmavmc)); then
	echo "=== dev-cluster: starting pvmc1 at $(date -Is)" >>"$dev/pvmc1.log"
	"$plasmavmc_bin" server \
		--listen "127.0.0.1:$plasmavmc_port" \
		--chainfire-endpoints "$endpoints" \
		--auth none \
		"${plasmavmc_flags[@]}" \
		>>"$dev/pvmc1.log" 2>&1 &
	pids+=("$!")
	names+=(pvmc1)
	plasmavmc_pid=$!
	log "started pvmc1 (pid $!), log $dev/pvmc1.log"
	wait_ready pvmc1 "http://127.0.0.1:$plasmavmc_port$ready_path"
fi
if ((with_agent)); then
	pvm=$dev/plasmavmc
	mkdir -p "$pvm/pools/local/images" "$pvm/state"
	# The lab libvirtd (installs qemu and libvirt through scripts/deps.sh when missing) and
	# the tiny guest (built once into bin/guest).
	if [[ -n $libvirt_host ]]; then
		"$root/scripts/libvirt.sh" host start "$libvirt_host" >/dev/null || die "scripts/libvirt.sh host start $libvirt_host failed"
		libvirt_sock=${PLASMA_HOSTS:-/tmp/plasma-hosts}/$libvirt_host/run/libvirt-sock
	else
		"$root/scripts/libvirt.sh" start || die "scripts/libvirt.sh start failed"
		libvirt_sock=/run/libvirt/libvirt-sock
	fi
	guest_dir=$("$root/scripts/guest.sh") || die "scripts/guest.sh failed"
	# Registered images are immutable: copy only what is missing.
	[[ -s $pvm/pools/local/images/tiny-kernel ]] || cp "$guest_dir/vmlinux" "$pvm/pools/local/images/tiny-kernel"
	[[ -s $pvm/pools/local/images/tiny-initrd ]] || cp "$guest_dir/initrd.cpio.gz" "$pvm/pools/local/images/tiny-initrd"
	echo "=== dev-cluster: starting agent dev1 at $(date -Is)" >>"$dev/pvmc-agent.log"
	"$agent_bin" \
		--host-name dev1 \
		--listen "127.0.0.1:$agent_port" \
		--chainfire-endpoints "$endpoints" \
		--libvirt-socket "$libvirt_sock" \
		--pool-local "$pvm/pools/local" \
		--state-dir "$pvm/state" \
		"${agent_flags[@]}" \
		>>"$dev/pvmc-agent.log" 2>&1 &
	pids+=("$!")
	names+=(pvmc-agent)
	agent_pid=$!
	log "started PlasmaVMC agent dev1 (pid $!), log $dev/pvmc-agent.log"
	wait_ready pvmc-agent "http://127.0.0.1:$agent_port$ready_path"
	for img in "tiny-kernel kernel" "tiny-initrd initrd"; do
		read -r name format <<<"$img"
		"$plasmavmc_bin" image register "$name" --endpoints "http://127.0.0.1:$plasmavmc_port" \
			--pool local --format "$format" --path "images/$name" >/dev/null ||
			die "plasmavmc image register $name failed"
	done
	log "registered the tiny guest as images tiny-kernel and tiny-initrd (pool local)"
fi

cat <<EOF

ChainFire dev cluster is up (data and logs in ${dev#"$root"/}/):
  cf1  client http://127.0.0.1:2379   peer http://127.0.0.1:2380   pid ${pids[0]}
  cf2  client http://127.0.0.1:22379  peer http://127.0.0.1:22380  pid ${pids[1]}
  cf3  client http://127.0.0.1:32379  peer http://127.0.0.1:32380  pid ${pids[2]}

Try it with etcd's own client:
  ETCDCTL_API=3 etcdctl --endpoints=$endpoints put foo bar
  ETCDCTL_API=3 etcdctl --endpoints=$endpoints get foo
  ETCDCTL_API=3 etcdctl --endpoints=$endpoints endpoint status -w table

EOF
if ((with_iam)); then
	cat <<EOF
IAM is up: iam1  http://127.0.0.1:$iam_port  pid ${pids[3]}  (audit log ${dev#"$root"/}/iam/audit.log)
Log in as admin (development password in ${dev#"$root"/}/iam/admin-password):
  bin/iam login --username admin --password-file ${dev#"$root"/}/iam/admin-password
  bin/iam user list

EOF
fi
if ((with_watchbus)); then
	cat <<EOF
WatchBus is up: wb1  http://127.0.0.1:$watchbus_port  pid $watchbus_pid  (--auth none: development only)
  bin/watchbus subscribe --prefix foo -o json      # then: etcdctl put foo bar

EOF
fi
if ((with_plasmavmc)); then
	cat <<EOF
PlasmaVMC is up: pvmc1  http://127.0.0.1:$plasmavmc_port  pid $plasmavmc_pid  (--auth none: development only)
EOF
	if ((with_agent)); then
		cat <<EOF
  agent dev1 (pid $agent_pid, health http://127.0.0.1:$agent_port), libvirtd $libvirt_sock,
  pool local ${pvm#"$root"/}/pools/local, serial logs ${pvm#"$root"/}/state/<vm id>/serial.log
Boot the tiny guest (96 MiB; it prints a heartbeat on its serial console every second):
  bin/plasmavmc vm create hello --project demo --memory 96 --kernel tiny-kernel --initrd tiny-initrd \\
      --cmdline 'console=ttyS0 quiet'
  bin/plasmavmc vm list                  # running once the first heartbeat arrived (~5 s under TCG)
  bin/plasmavmc vm show ID -o json       # status: boot id, heartbeat, restarts
  bin/plasmavmc vm reboot ID; bin/plasmavmc vm stop ID; bin/plasmavmc vm start ID
  bin/plasmavmc vm delete ID             # destroys the domain and its disks
  bin/plasmavmc host list

EOF
	else
		echo "  (no agent: not root, or PLASMAVMC_AGENT_BIN=none; VMs stay PENDING)"
		echo
	fi
fi
echo "Ctrl-C stops everything (data is kept; --fresh starts over)."

# Stay in the foreground; report nodes that exit on their own. The traps end the script.
while ((${#pids[@]} > 0)); do
	status=0
	wait -n || status=$?
	if dead=$(dead_node); then
		log "$dead exited on its own (status $status); see $dev/$dead.log — the others keep running"
		for i in "${!names[@]}"; do
			if [[ ${names[$i]} == "$dead" ]]; then
				unset 'names[i]' 'pids[i]'
			fi
		done
		names=("${names[@]}")
		pids=("${pids[@]}")
	fi
done
log "all nodes have exited"
exit 1
