#!/usr/bin/env bash
# docker-image.sh — build the FROM-scratch ChainFire and IAM images from bin/.
#
#   scripts/docker-image.sh [IMAGE]
#
# IMAGE (the ChainFire image) defaults to $CHAINFIRE_IMAGE or plasmacloud/chainfire:dev.
# The binary is $CHAINFIRE_BIN or bin/chainfire (`make build`); it must be static, since
# the image has no dynamic loader. Nothing is pulled: the images start from scratch.
#
# The IAM image ($IAM_IMAGE or plasmacloud/iam:dev, from $IAM_BIN or bin/iam) is built
# after it when that binary exists; IAM_IMAGE=none skips it. Likewise the WatchBus image
# ($WATCHBUS_IMAGE or plasmacloud/watchbus:dev, from $WATCHBUS_BIN or bin/watchbus) and
# the PlasmaVMC controller image ($PLASMAVMC_IMAGE or plasmacloud/plasmavmc:dev, from
# $PLASMAVMC_BIN or bin/plasmavmc; the agent has no image: it runs on each hypervisor host
# beside libvirtd).
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

iam_bin=${IAM_BIN:-$root/bin/iam}
iam_image=${IAM_IMAGE:-plasmacloud/iam:dev}
watchbus_bin=${WATCHBUS_BIN:-$root/bin/watchbus}
watchbus_image=${WATCHBUS_IMAGE:-plasmacloud/watchbus:dev}
plasmavmc_bin=${PLASMAVMC_BIN:-$root/bin/plasmavmc}
plasmavmc_image=${PLASMAVMC_IMAGE:-plasmacloud/plasmavmc:dev}

# static_or_die refuses a dynamically linked binary: it cannot run in scratch.
static_or_die() {
	# An ELF with a program interpreter is dynamically linked and cannot run in scratch.
	if command -v readelf >/dev/null && readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; then
		die "$1 is dynamically linked; build it with CGO_ENABLED=0 (make build does)"
	fi
}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
static_or_die "$bin"
cp "$bin" "$ctx/chainfire"
mkdir "$ctx/data"

# Without the buildx plugin, a recent docker CLI only builds with the classic builder.
if ! docker buildx version >/dev/null 2>&1; then
	export DOCKER_BUILDKIT=0
fi
# build DOCKERFILE IMAGE CONTEXT: quiet on success (the classic builder warns that it is
# deprecated); all output on failure.
build() {
	local out
	if ! out=$(docker build -f "$1" -t "$2" "$3" 2>&1); then
		echo "$out" >&2
		die "docker build of $2 failed"
	fi
	echo "docker-image: built $2" >&2
}
build "$root/deploy/docker/Dockerfile.chainfire" "$image" "$ctx"

if [[ $iam_image != none && -x $iam_bin ]]; then
	static_or_die "$iam_bin"
	iam_ctx="$ctx/iam-context"
	mkdir "$iam_ctx"
	cp "$iam_bin" "$iam_ctx/iam"
	build "$root/deploy/docker/Dockerfile.iam" "$iam_image" "$iam_ctx"
elif [[ $iam_image != none ]]; then
	echo "docker-image: $iam_bin not found; IAM image skipped (make build makes it)" >&2
fi

if [[ $watchbus_image != none && -x $watchbus_bin ]]; then
	static_or_die "$watchbus_bin"
	watchbus_ctx="$ctx/watchbus-context"
	mkdir "$watchbus_ctx"
	cp "$watchbus_bin" "$watchbus_ctx/watchbus"
	build "$root/deploy/docker/Dockerfile.watchbus" "$watchbus_image" "$watchbus_ctx"
elif [[ $watchbus_image != none ]]; then
	echo "docker-image: $watchbus_bin not found; WatchBus image skipped (make build makes it)" >&2
fi

if [[ $plasmavmc_image != none && -x $plasmavmc_bin ]]; then
	static_or_die "$plasmavmc_bin"
	plasmavmc_ctx="$ctx/plasmavmc-context"
	mkdir "$plasmavmc_ctx"
	cp "$plasmavmc_bin" "$plasmavmc_ctx/plasmavmc"
	build "$root/deploy/docker/Dockerfile.plasmavmc" "$plasmavmc_image" "$plasmavmc_ctx"
elif [[ $plasmavmc_image != none ]]; then
	echo "docker-image: $plasmavmc_bin not found; PlasmaVMC image skipped (make build makes it)" >&2
fi
