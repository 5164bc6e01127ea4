#!/usr/bin/env bash
# tools.sh — build the protobuf toolchain into bin/tools/ for `make proto`.
#
#   scripts/tools.sh
#
# Builds pinned versions from the Go module proxy; a tool already built at its pinned
# version is left alone, so a second run is instant. buf takes minutes to compile the
# first time, which is why ordinary builds and tests never need this: generated code is
# committed.
set -euo pipefail

# name  module path@version (keep versions in step with proto/go.mod's protobuf/connect)
TOOLS=(
	"buf github.com/bufbuild/buf/cmd/buf@v1.75.0"
	"protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12"
	"protoc-gen-connect-go connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1"
)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/bin/tools"
export PATH="/usr/local/go/bin:$PATH"
mkdir -p "$dest"

# built_version prints the module version a Go binary was built from ("" if unknown).
built_version() {
	go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

for entry in "${TOOLS[@]}"; do
	read -r name spec <<<"$entry"
	want=${spec##*@}
	if [[ -x "$dest/$name" && "$(built_version "$dest/$name")" == "$want" ]]; then
		continue
	fi
	echo "tools: building $spec" >&2
	# GOWORK=off: tools resolve their own dependencies, not the workspace's.
	GOWORK=off CGO_ENABLED=0 GOBIN="$dest" go install -trimpath "$spec"
done
