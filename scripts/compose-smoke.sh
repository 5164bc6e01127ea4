#!/usr/bin/env bash
# compose-smoke.sh — smoke-test deploy/docker-compose.yml end to end.
#
#   scripts/compose-smoke.sh
#
# Builds the ChainFire image from bin/chainfire (scripts/docker-image.sh), brings the
# 3-node compose cluster up under a private project name, waits for every node's
# readiness endpoint on its published port, writes a key through cf1 with etcdctl and
# reads it back through every node, then tears everything down including the volumes.
# On failure it prints the containers' logs. Exits non-zero on any failure.
#
# Needs a running Docker engine; installs docker-compose and etcdctl (Debian packages)
# through scripts/deps.sh when missing.
#
# Environment:
#   CHAINFIRE_IMAGE  image tag to build and run (default plasmacloud/chainfire:smoke)
#   READY_PATH       readiness path (default /readyz)
#   READY_TIMEOUT    seconds to wait for readiness (default 120)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CHAINFIRE_IMAGE=${CHAINFIRE_IMAGE:-plasmacloud/chainfire:smoke}
ready_path=${READY_PATH:-/readyz}
ready_timeout=${READY_TIMEOUT:-120}
project=plasmacloud-smoke-$$
ports=(23791 23792 23793)

log() { echo "compose-smoke: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

scripts/deps.sh docker-compose
command -v docker >/dev/null || die "docker not found; install Docker Engine"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running? are you in the docker group?)"
export ETCDCTL_API=3

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
for p in "${ports[@]}"; do
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

ok=1
log "PASS"
