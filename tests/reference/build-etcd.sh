#!/usr/bin/env bash
# Builds real etcd (etcd, etcdctl, etcdutl) from the Go module proxy, to serve as the reference
# implementation in differential tests (3.7.3, the default) and to make the older releases'
# snapshot files in bbolt/testdata (3.6.16, 3.5.36).
#
# Usage: tests/reference/build-etcd.sh [VERSION]   (VERSION defaults to 3.7.3)
#   The last line of stdout is the directory holding the three binaries
#   ($HOME/.cache/oxcd-reference/etcd-vVERSION), so callers can do
#   ETCD_BIN_DIR="$(tests/reference/build-etcd.sh | tail -n1)".
#   Everything else (progress, go's output) goes to stderr.
#   A version builds if etcd/vVERSION/ here holds its go.mod and go.sum; to add one, make that
#   directory with a go.mod holding just `module oxcd.reference/etcd` and `go 1.26.0`, and run
#   there `go get -tool go.etcd.io/etcd/{server,etcdctl,etcdutl}/v3@vVERSION` with this
#   script's GOMODCACHE and GOTOOLCHAIN.
set -euo pipefail

VERSION="${1:-3.7.3}"
SCRIPT=build-etcd.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$here/etcd/v$VERSION"
# shellcheck source=go-build.sh
source "$here/go-build.sh"

[[ -f "$module/go.mod" && -f "$module/go.sum" ]] ||
    die "no module for etcd v$VERSION at $module (see this script's usage to add one)"

# Debian ships etcd 3.4 and no later one; the upstream module versions are the only way to get
# 3.5+ here, and `go install …@vVERSION` refuses them because their go.mod files carry
# replace directives. The module in ./etcd/vVERSION requires the three upstream main packages
# as `tool`s at exactly that version (MVS picks the same dependency versions as each upstream
# go.mod), so `go build <upstream main package>` yields etcd's own binaries, not wrappers.

# `etcd --version`'s first line. Read whole, not through `| head` or `| grep -q`: those stop
# reading early, etcd then dies of SIGPIPE, and with pipefail a built etcd looked unbuilt (and
# an assignment of that pipeline ended the script under set -e).
version_of() {
    local text
    text="$("$1" --version 2>&1)" || return 1
    echo "${text%%$'\n'*}"
}

is_built() {
    [[ -x "$1/etcd" && -x "$1/etcdctl" && -x "$1/etcdutl" ]] || return 1
    [[ "$(version_of "$1/etcd")" == "etcd Version: $VERSION" ]]
}

build_into() {
    go build -trimpath -o "$1/etcd" go.etcd.io/etcd/server/v3 ||
        die "go build of etcd (go.etcd.io/etcd/server/v3@v$VERSION) failed"
    go build -trimpath -o "$1/etcdctl" go.etcd.io/etcd/etcdctl/v3 ||
        die "go build of etcdctl (go.etcd.io/etcd/etcdctl/v3@v$VERSION) failed"
    go build -trimpath -o "$1/etcdutl" go.etcd.io/etcd/etcdutl/v3 ||
        die "go build of etcdutl (go.etcd.io/etcd/etcdutl/v3@v$VERSION) failed"
}

build_reference "$cache/etcd-v$VERSION" "$module" "etcd v$VERSION"

