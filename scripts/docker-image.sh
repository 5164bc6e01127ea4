#!/usr/bin/env bash
# docker-image.sh — build the FROM-scratch ChainFire image from bin/chainfire.
#
#   scripts/docker-image.sh [IMAGE]
#
# IMAGE defaults to $CHAINFIRE_IMAGE or plasmacloud/chainfire:dev. The binary is
# $CHAINFIRE_BIN or bin/chainfire (`make build`); it must be static, since the image has
# no dynamic loader. Nothing is pulled: the image starts from scratch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${CHAINFIRE_BIN:-$root/bin/chainfire}
image=${1:-${CHAINFIRE_IMAGE:-plasmacloud/chainfire:dev}}

die() {
	echo "docker-image: error: $*" >&2
	exit 1
}

[[ -x $bin ]] || die "$bin not found; run \`make build\` first"
command -v docker >/dev/null || die "docker not found; install Docker Engine"
# An ELF with a program interpreter is dynamically linked and cannot run in scratch.
if command -v readelf >/dev/null && readelf -l "$bin" 2>/dev/null | grep -q 'program interpreter'; then
	die "$bin is dynamically linked; build it with CGO_ENABLED=0 (make build does)"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/chainfire"
mkdir "$ctx/data"

# Without the buildx plugin, a recent docker CLI only builds with the classic builder.
if ! docker buildx version >/dev/null 2>&1; then
	export DOCKER_BUILDKIT=0
fi
# Quiet on success (the classic builder warns that it is deprecated); all output on failure.
if ! out=$(docker build -f "$root/deploy/docker/Dockerfile.chainfire" -t "$image" "$ctx" 2>&1); then
	echo "$out" >&2
	die "docker build failed"
fi
echo "docker-image: built $image" >&2
