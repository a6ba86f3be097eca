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
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HOME:?HOME must be set}/.cache/oxcd-reference"
out="$cache/etcd-v$VERSION"
module="$here/etcd/v$VERSION"

die() {
    echo "build-etcd.sh: error: $*" >&2
    exit 1
}

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
    [[ -x "$out/etcd" && -x "$out/etcdctl" && -x "$out/etcdutl" ]] || return 1
    [[ "$(version_of "$out/etcd")" == "etcd Version: $VERSION" ]]
}

if is_built; then
    echo "$out"
    exit 0
fi

command -v go >/dev/null 2>&1 ||
    die "go is not installed (Go >= 1.26 is needed to build etcd v$VERSION); put a Go >= 1.26 toolchain on PATH (Debian's golang-go is too old)"

mkdir -p "$cache"
# Two test runs may start at once; the second waits for the first instead of racing it.
exec 9>"$cache/build-etcd.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if is_built; then
    echo "$out"
    exit 0
fi

# Caches live under $HOME/.cache so repeated CI runs on the same machine reuse the downloaded
# modules and compiled packages (a cold build takes minutes, a warm one seconds).
export GOMODCACHE="$cache/gomod"
export GOCACHE="$cache/gocache"
# go.mod asks for go 1.26; never let go download another toolchain (no network for that here),
# fail instead with go's own "requires go >= …" message.
export GOTOOLCHAIN=local
# -mod=readonly: go.sum is committed, so a mismatch must fail rather than be silently rewritten.
# Setting GOFLAGS also drops whatever the caller's environment put there.
export GOFLAGS=-mod=readonly
# etcd's release builds are static (CGO_ENABLED=0); this also avoids needing a C compiler.
export CGO_ENABLED=0

echo "build-etcd.sh: building etcd v$VERSION into $out ($(go version))" >&2

# Build into a scratch directory and rename at the end, so an interrupted build never leaves
# a half-written set of binaries that the check above would accept.
tmp="$(mktemp -d "$cache/etcd-v$VERSION.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

cd "$module"
start=$SECONDS
go build -trimpath -o "$tmp/etcd" go.etcd.io/etcd/server/v3 ||
    die "go build of etcd (go.etcd.io/etcd/server/v3@v$VERSION) failed"
go build -trimpath -o "$tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3 ||
    die "go build of etcdctl (go.etcd.io/etcd/etcdctl/v3@v$VERSION) failed"
go build -trimpath -o "$tmp/etcdutl" go.etcd.io/etcd/etcdutl/v3 ||
    die "go build of etcdutl (go.etcd.io/etcd/etcdutl/v3@v$VERSION) failed"

got="$(version_of "$tmp/etcd")" || die "the built etcd does not run"
[[ "$got" == "etcd Version: $VERSION" ]] || die "built etcd reports '$got', expected 'etcd Version: $VERSION'"

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "build-etcd.sh: built in $((SECONDS - start))s" >&2
echo "$out"
