#!/usr/bin/env bash
# bench-compare.sh — ChainFire against etcd on this machine, same client, interleaved rounds.
#
#   scripts/bench-compare.sh            (or: make bench-compare)
#   QUICK=1 scripts/bench-compare.sh    smoke run of a few seconds
#
# Starts a 3-member etcd cluster and a 3-member ChainFire cluster on 127.0.0.1 (free ports
# found at start, data under a fresh temp dir, both with their default durability: fsync on),
# waits for readiness (etcd: `etcdctl endpoint health`; ChainFire: GET /readyz), preloads the
# key space into both, then runs every workload below with `chainfire bench ... -o json`
# (gRPC, so the very same client drives both) in ROUNDS interleaved rounds: within a round each
# workload runs on one target and then on the other, and the order of the two alternates from
# round to round, so that the noise of a shared machine falls on both alike. It prints a
# markdown table of the medians over the rounds, and a second one with the CPU time the three
# server processes of each target spent per operation (utime+stime from /proc, a figure that
# machine noise disturbs much less than throughput). Both clusters are killed on exit.
#
# The bench client sticks to the first of its --endpoints (pkg/resilience.Endpoints) until it
# fails, so the script passes all three members, ordered so that the first is the current
# leader (ENDPOINT=leader, the default) or a follower (ENDPOINT=follower) in both clusters alike;
# the leader is looked up with `etcdctl endpoint status` before every run.
#
# Workloads (16-byte keys, 256-byte values, random keys of a KEY_SPACE-key space):
#   put        1, 16 and 256 clients (1, 4 and 16 connections); 1 client runs TOTAL/10 puts
#   get l / s  linearizable and serializable range of one key, 16 and 256 clients
#   watch      16 watchers of a prefix, 4 putters; ops are events received, latency put->event;
#              runs TOTAL/10 puts (so TOTAL*16/10 events)
#
# Environment:
#   ROUNDS         interleaved rounds (default 3; QUICK=1: 1)
#   TOTAL          operations per run (default 20000; QUICK=1: 300)
#   KEY_SPACE      distinct keys, preloaded before the rounds (default 10000; QUICK=1: 300)
#   ENDPOINT       leader or follower: which member the client talks to (default leader)
#   WORKLOADS      space-separated subset of: put1 put16 put256 getl16 getl256 gets16 gets256
#                  watch (default all)
#   CHAINFIRE_BIN  default bin/chainfire (`make build`)
#   ETCD_BIN       default etcd from PATH;  ETCDCTL_BIN  default etcdctl from PATH
#   CHAINFIRE_FLAGS, ETCD_FLAGS  extra server flags, e.g. CHAINFIRE_FLAGS="--log-store wal"
#   OUT_DIR        raw JSON lines, the tables and the server logs of failed starts are kept
#                  here (default tmp/bench-compare; the clusters' data dirs are always removed)
#   READY_TIMEOUT  seconds to wait for each cluster (default 60)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
quick=${QUICK:-0}
if [[ $quick == 1 ]]; then
	rounds=${ROUNDS:-1}
	total=${TOTAL:-300}
	key_space=${KEY_SPACE:-300}
else
	rounds=${ROUNDS:-3}
	total=${TOTAL:-20000}
	key_space=${KEY_SPACE:-10000}
fi
endpoint_mode=${ENDPOINT:-leader}
workloads=${WORKLOADS:-put1 put16 put256 getl16 getl256 gets16 gets256 watch}
cf_bin=${CHAINFIRE_BIN:-$root/bin/chainfire}
etcd_bin=${ETCD_BIN:-etcd}
etcdctl_bin=${ETCDCTL_BIN:-etcdctl}
out_dir=${OUT_DIR:-$root/tmp/bench-compare}
read -r -a cf_extra <<<"${CHAINFIRE_FLAGS:-}"
read -r -a etcd_extra <<<"${ETCD_FLAGS:-}"
ready_timeout=${READY_TIMEOUT:-60}

key_size=16
val_size=256
# etcd's server refuses client pings more often than every 5s (too_many_pings), and the
# bench client's default is 2s: use the same, etcd-safe setting against both.
common_flags=(--keepalive-time 10s --keepalive-timeout 10s --key-size "$key_size" --val-size "$val_size" --key-space "$key_space" -o json)

log() { echo "bench-compare: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$rounds: want a positive integer"
[[ $total =~ ^[1-9][0-9]*$ ]] || die "TOTAL=$total: want a positive integer"
[[ $key_space =~ ^[1-9][0-9]*$ ]] || die "KEY_SPACE=$key_space: want a positive integer"
[[ $endpoint_mode == leader || $endpoint_mode == follower ]] || die "ENDPOINT=$endpoint_mode: want leader or follower"
[[ -x $cf_bin ]] || die "$cf_bin not found; run \`make build\` first"
command -v "$etcd_bin" >/dev/null || die "$etcd_bin not found (Debian: apt-get install etcd-server)"
command -v "$etcdctl_bin" >/dev/null || die "$etcdctl_bin not found (Debian: apt-get install etcd-client)"
command -v curl >/dev/null || die "curl not found; run scripts/deps.sh"
export ETCDCTL_API=3

# workload_args NAME prints "SUBCOMMAND TOTAL_DIVISOR FLAGS..." of a workload.
workload_args() {
	case $1 in
	put1) echo "put 10 --clients 1 --conns 1" ;;
	put16) echo "put 1 --clients 16 --conns 4" ;;
	put256) echo "put 1 --clients 256 --conns 16" ;;
	getl16) echo "range 1 --consistency l --clients 16 --conns 4" ;;
	getl256) echo "range 1 --consistency l --clients 256 --conns 16" ;;
	gets16) echo "range 1 --consistency s --clients 16 --conns 4" ;;
	gets256) echo "range 1 --consistency s --clients 256 --conns 16" ;;
	watch) echo "watch 10 --watchers 16 --clients 4 --conns 4" ;;
	*) return 1 ;;
	esac
}

# workload_label NAME prints the table's name of a workload.
workload_label() {
	case $1 in
	put1) echo "put, 1 client" ;;
	put16) echo "put, 16 clients" ;;
	put256) echo "put, 256 clients" ;;
	getl16) echo "get linearizable, 16 clients" ;;
	getl256) echo "get linearizable, 256 clients" ;;
	gets16) echo "get serializable, 16 clients" ;;
	gets256) echo "get serializable, 256 clients" ;;
	watch) echo "watch, 16 watchers, 4 putters (events/s, put→event)" ;;
	esac
}

for w in $workloads; do
	workload_args "$w" >/dev/null || die "unknown workload $w in WORKLOADS"
done

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
pids=()
etcd_pids=()
cf_pids=()

# cleanup kills both clusters (SIGTERM, then SIGKILL after 10s) and removes their data.
cleanup() {
	local status=$? pid deadline
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	deadline=$((SECONDS + 10))
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A private copy: a `make build` elsewhere during the run must not swap the binary under the
# servers or change the client half-way.
cp -p "$cf_bin" "$tmp/chainfire"
cf_bin=$tmp/chainfire

# port_free PORT succeeds when nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_ports sets ports to 12 consecutive free ports below the ephemeral range.
pick_ports() {
	local try base p ok
	for try in $(seq 1 50); do
		base=$((20000 + (RANDOM % 1000) * 12))
		ok=1
		for ((p = base; p < base + 12; p++)); do
			if ! port_free "$p"; then
				ok=0
				break
			fi
		done
		if ((ok)); then
			ports=()
			for ((p = base; p < base + 12; p++)); do
				ports+=("$p")
			done
			return 0
		fi
		: "$try"
	done
	die "no 12 free consecutive ports found"
}
pick_ports
# Per cluster: client ports [0..2], peer ports [3..5].
etcd_ports=("${ports[@]:0:6}")
cf_ports=("${ports[@]:6:6}")

# start_cluster KIND NAMEPREFIX PORTS... starts three members of KIND (etcd or chainfire) and
# appends their pids to KIND's pid array.
start_cluster() {
	local kind=$1 prefix=$2
	shift 2
	local p=("$@") i initial="" name
	for i in 0 1 2; do
		initial+="${initial:+,}$prefix$((i + 1))=http://127.0.0.1:${p[$((i + 3))]}"
	done
	for i in 0 1 2; do
		name=$prefix$((i + 1))
		mkdir -p "$tmp/$kind/$name"
		local flags=(
			--name "$name" --data-dir "$tmp/$kind/$name"
			--listen-client-urls "http://127.0.0.1:${p[$i]}" --advertise-client-urls "http://127.0.0.1:${p[$i]}"
			--listen-peer-urls "http://127.0.0.1:${p[$((i + 3))]}" --initial-advertise-peer-urls "http://127.0.0.1:${p[$((i + 3))]}"
			--initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "bench-$kind-$$"
		)
		if [[ $kind == etcd ]]; then
			"$etcd_bin" "${flags[@]}" --logger zap --log-outputs stderr "${etcd_extra[@]}" >"$tmp/$name.log" 2>&1 &
			etcd_pids+=("$!")
		else
			"$cf_bin" server "${flags[@]}" "${cf_extra[@]}" >"$tmp/$name.log" 2>&1 &
			cf_pids+=("$!")
		fi
		pids+=("$!")
	done
}

# endpoints_of PORTS... prints the client URLs of a cluster, comma-separated.
endpoints_of() {
	local out="" i
	for i in 0 1 2; do
		out+="${out:+,}http://127.0.0.1:$1"
		shift
	done
	echo "$out"
}

# wait_ready KIND PREFIX ENDPOINTS waits until every member answers its health check.
wait_ready() {
	local kind=$1 prefix=$2 eps=$3 deadline=$((SECONDS + ready_timeout)) ep pid n
	local -n kpids="${kind}_pids"
	for ep in ${eps//,/ }; do
		while true; do
			if [[ $kind == etcd ]]; then
				"$etcdctl_bin" --endpoints "$ep" --command-timeout 2s endpoint health >/dev/null 2>&1 && break
			else
				curl -fsS -m 2 -o /dev/null "$ep/readyz" 2>/dev/null && break
			fi
			n=1
			for pid in "${kpids[@]}"; do
				if ! kill -0 "$pid" 2>/dev/null; then
					cp "$tmp/$prefix$n.log" "$out_dir/" 2>/dev/null || true
					die "$kind member $prefix$n exited; log kept in $out_dir/$prefix$n.log: $(tail -n 5 "$tmp/$prefix$n.log")"
				fi
				n=$((n + 1))
			done
			if ((SECONDS >= deadline)); then
				cp "$tmp/$prefix"?.log "$out_dir/" 2>/dev/null || true
				die "$kind at $ep not ready after ${ready_timeout}s; logs kept in $out_dir"
			fi
			sleep 0.2
		done
	done
}

# ordered_endpoints ENDPOINTS prints the endpoints with the leader first (ENDPOINT=leader) or
# a follower first (ENDPOINT=follower). etcdctl's status works against both servers.
ordered_endpoints() {
	local eps=$1 status ep leader="" others=()
	status=$("$etcdctl_bin" --endpoints "$eps" --command-timeout 5s endpoint status -w simple 2>/dev/null) || true
	for ep in ${eps//,/ }; do
		# -w simple: endpoint, ID, version, db size, is leader, is learner, term, index, ...
		if awk -F', ' -v ep="$ep" '$1 == ep && $5 == "true" { found = 1 } END { exit !found }' <<<"$status"; then
			leader=$ep
		else
			others+=("$ep")
		fi
	done
	if [[ -z $leader ]]; then
		log "warning: no leader found in $eps; keeping the given order"
		echo "$eps"
		return
	fi
	if [[ $endpoint_mode == leader ]]; then
		echo "$leader,${others[0]},${others[1]}"
	else
		echo "${others[0]},$leader,${others[1]}"
	fi
}

# cpu_ticks PIDS... prints the utime+stime clock ticks of the processes, summed.
cpu_ticks() {
	local pid sum=0 stat rest
	for pid in "$@"; do
		stat=$(<"/proc/$pid/stat")
		rest=${stat##*) } # fields from the 3rd on; comm may hold spaces
		read -r -a f <<<"$rest"
		sum=$((sum + f[11] + f[12]))
	done
	echo "$sum"
}
clk_tck=$(getconf CLK_TCK)

# json_field NAME JSON prints a numeric field of the bench's JSON line.
json_field() { sed -nE "s/.*\"$1\":(-?[0-9.eE+-]+).*/\1/p" <<<"$2"; }

# run_one TARGET WORKLOAD ROUND runs one benchmark and appends its JSON line (with target,
# workload, round and server CPU µs per op added) to results.jsonl.
run_one() {
	local target=$1 w=$2 round=$3 eps args sub div n line t0 t1 ops cpu_us
	local -n tpids="${target}_pids"
	if [[ $target == etcd ]]; then eps=$etcd_eps; else eps=$cf_eps; fi
	eps=$(ordered_endpoints "$eps")
	read -r -a args <<<"$(workload_args "$w")"
	sub=${args[0]}
	div=${args[1]}
	n=$((total / div))
	((n > 0)) || n=1
	t0=$(cpu_ticks "${tpids[@]}")
	if ! line=$("$cf_bin" bench "$sub" --endpoints "$eps" "${common_flags[@]}" --total "$n" "${args[@]:2}" 2>"$tmp/bench.err"); then
		log "warning: $target $w round $round failed: $(tail -n 3 "$tmp/bench.err")"
		[[ -n $line ]] || return 0
	fi
	t1=$(cpu_ticks "${tpids[@]}")
	ops=$(json_field total "$line")
	cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v ops="$ops" 'BEGIN { if (ops > 0) printf "%.1f", d * 1e6 / hz / ops; else print 0 }')
	line="{\"target\":\"$target\",\"workload\":\"$w\",\"round\":$round,\"endpoint\":\"$endpoint_mode\",\"server_cpu_us_per_op\":$cpu_us,${line#\{}"
	echo "$line" >>"$results"
	log "  $target $w: $(fmt_ops "$(json_field ops_per_sec "$line")") ops/s, p50 $(json_field p50_ms "$line") ms, p99 $(json_field p99_ms "$line") ms, errors $(json_field errors "$line"), server CPU ${cpu_us} µs/op"
}

# median TARGET WORKLOAD FIELD prints the median of a field over the rounds ("-" if none).
median() {
	grep -F "\"target\":\"$1\",\"workload\":\"$2\"," "$results" |
		sed -nE "s/.*\"$3\":(-?[0-9.eE+-]+).*/\1/p" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fmt_ops() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.0f", v }'; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f ms", v }'; }
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == 0) print "-"; else printf "%.2f×", b / a }'; }

etcd_eps=$(endpoints_of "${etcd_ports[@]:0:3}")
cf_eps=$(endpoints_of "${cf_ports[@]:0:3}")
log "temp dir $tmp; etcd $etcd_eps; ChainFire $cf_eps"
start_cluster etcd e "${etcd_ports[@]}"
start_cluster cf cf "${cf_ports[@]}"
wait_ready etcd e "$etcd_eps"
wait_ready cf cf "$cf_eps"
tree=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$root" status --porcelain -- chainfire pkg proto 2>/dev/null) ]]; then
	tree+=" + uncommitted changes"
fi
log "both clusters ready: $("$etcd_bin" --version | head -n 1); ChainFire ${CHAINFIRE_BIN:-bin/chainfire} built $(date -r "$cf_bin" '+%F %T') (work tree now at $tree)"

stamp=$(date +%Y%m%d-%H%M%S)
results=$out_dir/results-$stamp.jsonl
: >"$results"

# Preload: every key of the key space, once, into both (the gets then find their keys), and
# a warm-up of connections and caches.
for target in etcd cf; do
	if [[ $target == etcd ]]; then eps=$etcd_eps; else eps=$cf_eps; fi
	log "preloading $key_space keys into $target"
	"$cf_bin" bench put --endpoints "$eps" "${common_flags[@]}" --clients 64 --conns 8 \
		--total $((key_space * 3)) >/dev/null 2>"$tmp/bench.err" ||
		log "warning: preload of $target failed: $(tail -n 3 "$tmp/bench.err")"
done

started=$SECONDS
for ((round = 1; round <= rounds; round++)); do
	log "round $round of $rounds (ENDPOINT=$endpoint_mode, TOTAL=$total)"
	for w in $workloads; do
		if ((round % 2)); then order=(etcd cf); else order=(cf etcd); fi
		for target in "${order[@]}"; do
			run_one "$target" "$w" "$round"
		done
	done
done
log "rounds took $((SECONDS - started))s; raw results in $results"

table=$out_dir/table-$stamp.md
{
	echo "Medians of $rounds interleaved round(s); TOTAL=$total, KEY_SPACE=$key_space, ${key_size}-byte keys, ${val_size}-byte values, client on the $endpoint_mode${CHAINFIRE_FLAGS:+, ChainFire flags: $CHAINFIRE_FLAGS}${ETCD_FLAGS:+, etcd flags: $ETCD_FLAGS}. Ratio: ChainFire ops/s ÷ etcd ops/s."
	echo
	echo "| workload | etcd ops/s | etcd p50 | etcd p99 | ChainFire ops/s | ChainFire p50 | ChainFire p99 | ratio |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for w in $workloads; do
		eo=$(median etcd "$w" ops_per_sec)
		co=$(median cf "$w" ops_per_sec)
		echo "| $(workload_label "$w") | $(fmt_ops "$eo") | $(fmt_ms "$(median etcd "$w" p50_ms)") | $(fmt_ms "$(median etcd "$w" p99_ms)") | $(fmt_ops "$co") | $(fmt_ms "$(median cf "$w" p50_ms)") | $(fmt_ms "$(median cf "$w" p99_ms)") | $(fmt_ratio "$eo" "$co") |"
	done
	echo
	echo "Server CPU per operation (utime+stime of all three members during the run ÷ operations; median):"
	echo
	echo "| workload | etcd µs/op | ChainFire µs/op | ratio |"
	echo "|---|---:|---:|---:|"
	for w in $workloads; do
		ec=$(median etcd "$w" server_cpu_us_per_op)
		cc=$(median cf "$w" server_cpu_us_per_op)
		echo "| $(workload_label "$w") | $ec | $cc | $(fmt_ratio "$ec" "$cc") |"
	done
} | tee "$table"
log "table saved to $table"
