#!/usr/bin/env bash
# compose-smoke.sh — smoke-test deploy/docker-compose.yml end to end.
#
#   scripts/compose-smoke.sh
#
# Builds the ChainFire and IAM images from bin/ (scripts/docker-image.sh), brings the
# compose stack (3 ChainFire members, 2 IAM replicas) up under a private project name,
# waits for every readiness endpoint on its published port, writes a key through cf1
# with etcdctl and reads it back through every node, logs in as the bootstrap admin at
# iam1's /oauth2/token and lists users with that token through iam2, checks both
# WatchBus replicas' /readyz and that a put shows up on a subscription through wb2, checks
# the PlasmaVMC controller's /readyz and registers and lists an image through it, then
# tears everything down including the volumes.
# On failure it prints the containers' logs. Exits non-zero on any failure.
#
# Needs a running Docker engine; installs docker-compose and etcdctl (Debian packages)
# through scripts/deps.sh when missing.
#
# Environment:
#   CHAINFIRE_IMAGE  image tag to build and run (default plasmacloud/chainfire:smoke)
#   IAM_IMAGE        likewise for IAM (default plasmacloud/iam:smoke)
#   WATCHBUS_IMAGE   likewise for WatchBus (default plasmacloud/watchbus:smoke)
#   PLASMAVMC_IMAGE  likewise for the PlasmaVMC controller (default plasmacloud/plasmavmc:smoke)
#   READY_PATH       readiness path (default /readyz)
#   READY_TIMEOUT    seconds to wait for readiness (default 120)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CHAINFIRE_IMAGE=${CHAINFIRE_IMAGE:-plasmacloud/chainfire:smoke}
export IAM_IMAGE=${IAM_IMAGE:-plasmacloud/iam:smoke}
export WATCHBUS_IMAGE=${WATCHBUS_IMAGE:-plasmacloud/watchbus:smoke}
export PLASMAVMC_IMAGE=${PLASMAVMC_IMAGE:-plasmacloud/plasmavmc:smoke}
ready_path=${READY_PATH:-/readyz}
ready_timeout=${READY_TIMEOUT:-120}
project=plasmacloud-smoke-$$
ports=(23791 23792 23793)
iam_ports=(7001 7011)
watchbus_ports=(7002 7012)
plasmavmc_ports=(7003)

log() { echo "compose-smoke: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

scripts/deps.sh docker-compose
command -v docker >/dev/null || die "docker not found; install Docker Engine"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running? are you in the docker group?)"
export ETCDCTL_API=3

[[ -x ${IAM_BIN:-bin/iam} ]] || die "${IAM_BIN:-bin/iam} not found; run \`make build\` first"
[[ -x ${WATCHBUS_BIN:-bin/watchbus} ]] || die "${WATCHBUS_BIN:-bin/watchbus} not found; run \`make build\` first"
[[ -x ${PLASMAVMC_BIN:-bin/plasmavmc} ]] || die "${PLASMAVMC_BIN:-bin/plasmavmc} not found; run \`make build\` first"
scripts/docker-image.sh "$CHAINFIRE_IMAGE"

compose=(docker-compose --project-name "$project" --file deploy/docker-compose.yml)
ok=0
cleanup() {
	if ((!ok)); then
		log "FAILED; container logs:"
		"${compose[@]}" logs --no-color --tail=100 >&2 || true
	fi
	"${compose[@]}" down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting the cluster (project $project, image $CHAINFIRE_IMAGE)"
"${compose[@]}" up -d --quiet-pull 2>&1 | sed 's/^/    /' >&2

deadline=$((SECONDS + ready_timeout))
for p in "${ports[@]}" "${iam_ports[@]}" "${watchbus_ports[@]}" "${plasmavmc_ports[@]}"; do
	url="http://127.0.0.1:$p$ready_path"
	until curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; do
		((SECONDS < deadline)) || die "$url not ready after ${ready_timeout}s"
		sleep 1
	done
	log "$url ready"
done

key=smoke-$project
value="hello from $project at $(date -Is)"
etcdctl=(etcdctl --dial-timeout=5s --command-timeout=15s)
out=$("${etcdctl[@]}" --endpoints "127.0.0.1:${ports[0]}" put "$key" "$value")
[[ $out == OK ]] || die "put through 127.0.0.1:${ports[0]} answered: $out"
for p in "${ports[@]}"; do
	got=$("${etcdctl[@]}" --endpoints "127.0.0.1:$p" get --print-value-only "$key")
	[[ $got == "$value" ]] || die "get through 127.0.0.1:$p returned \"$got\", want \"$value\""
done
log "put through cf1, read back through cf1, cf2, cf3"

# IAM: the bootstrap admin logs in through iam1; the token works on iam2 (stateless
# replicas over the same ChainFire, verifying each other's tokens).
tok=$(curl -fsS -m 10 -X POST "http://127.0.0.1:${iam_ports[0]}/oauth2/token" \
	--data-urlencode grant_type=password --data-urlencode username=admin \
	--data-urlencode "password=$(<deploy/dev-secrets/iam-admin-password)" | jq -r .access_token) ||
	die "password login at iam1's /oauth2/token failed"
[[ -n $tok && $tok != null ]] || die "iam1's /oauth2/token answered without an access_token"
users=$(curl -fsS -m 10 -X POST "http://127.0.0.1:${iam_ports[1]}/iam.v1.UserService/ListUsers" \
	-H "Authorization: Bearer $tok" -H 'Content-Type: application/json' -d '{}' | jq -r '.users[].name') ||
	die "ListUsers through iam2 with iam1's token failed"
grep -qx admin <<<"$users" || die "ListUsers through iam2 does not list admin: $users"
log "admin logged in through iam1, listed users through iam2"

# WatchBus: a subscription through wb2 sees a put made through cf1.
wb_out=$(mktemp)
"${WATCHBUS_BIN:-bin/watchbus}" subscribe --endpoints "http://127.0.0.1:${watchbus_ports[1]}" \
	--prefix "/smoke/$project/" -o json --max-events 1 --timeout 20s >"$wb_out" 2>&1 &
wb_pid=$!
sleep 1
"${etcdctl[@]}" --endpoints "127.0.0.1:${ports[0]}" put "/smoke/$project/wb" "$value" >/dev/null
wait "$wb_pid" || true
got=$(jq -r 'select(.key != null) | .value' <"$wb_out" 2>/dev/null | head -1)
rm -f "$wb_out"
[[ $got == "$value" ]] || die "subscription through wb2 did not deliver the put (got \"$got\")"
log "put through cf1 delivered by a subscription through wb2"

# PlasmaVMC: the controller answers its API (no agent in compose: no hosts, and an image
# registration goes through to ChainFire).
"${PLASMAVMC_BIN:-bin/plasmavmc}" image register smoke-kernel --endpoints "http://127.0.0.1:${plasmavmc_ports[0]}" \
	--pool local --format kernel --path images/smoke-kernel >/dev/null || die "plasmavmc image register through pvmc1 failed"
"${PLASMAVMC_BIN:-bin/plasmavmc}" image list --endpoints "http://127.0.0.1:${plasmavmc_ports[0]}" | grep -q smoke-kernel ||
	die "plasmavmc image list through pvmc1 does not list smoke-kernel"
log "PlasmaVMC controller pvmc1 ready; an image registered and listed through it"

ok=1
log "PASS"
