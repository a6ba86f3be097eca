#!/usr/bin/env bash
# Builds the real Kubernetes control plane v1.37.2 (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) from the Go module proxy, so integration tests can run the upstream
# apiserver on oxcd and on etcd.
#
# Usage: tests/reference/build-kubernetes.sh
#   The last line of stdout is the directory holding the four binaries
#   ($HOME/.cache/oxcd-reference/kubernetes-v1.37.2), so callers can do
#   KUBE_BIN_DIR="$(tests/reference/build-kubernetes.sh | tail -n1)".
#   Everything else (progress, go's output) goes to stderr.
#
# The wrapper module in ./kubernetes requires k8s.io/kubernetes and pins every staging module to
# its published tag (see kubernetes/generate-go-mod.sh, which writes its go.mod and go.sum), so
# `go build k8s.io/kubernetes/cmd/<x>` yields Kubernetes' own binaries. A cold build compiles
# some thousand packages and takes tens of minutes on two cores; the Go caches below make every
# later run on the same machine a no-op.
set -euo pipefail

VERSION=1.37.2
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HOME:?HOME must be set}/.cache/oxcd-reference"
out="$cache/kubernetes-v$VERSION"

die() {
    echo "build-kubernetes.sh: error: $*" >&2
    exit 1
}

is_built() {
    local bin
    for bin in "${BINARIES[@]}"; do
        [[ -x "$out/$bin" ]] || return 1
    done
    "$out/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes v$VERSION"
}

if is_built; then
    echo "$out"
    exit 0
fi

command -v go >/dev/null 2>&1 ||
    die "go is not installed (Go >= 1.26 is needed to build Kubernetes v$VERSION); put a Go >= 1.26 toolchain on PATH (Debian's golang-go is too old)"

mkdir -p "$cache"
# Two test runs may start at once; the second waits for the first instead of racing it.
exec 9>"$cache/build-kubernetes.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if is_built; then
    echo "$out"
    exit 0
fi

# Shared with build-etcd.sh: the two builds have many modules in common.
export GOMODCACHE="$cache/gomod"
export GOCACHE="$cache/gocache"
# go.mod asks for go 1.26 (as Kubernetes' own does); never download another toolchain.
export GOTOOLCHAIN=local
# -mod=readonly: go.sum is committed, so a mismatch must fail rather than be silently rewritten.
export GOFLAGS=-mod=readonly
# Kubernetes' release builds of these four are static (CGO_ENABLED=0).
export CGO_ENABLED=0

# What hack/lib/version.sh stamps into a release build. Without it the binaries report
# v0.0.0-master, and kubectl and the apiserver's version checks treat them as a different release.
minor="${VERSION#*.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

echo "build-kubernetes.sh: building Kubernetes v$VERSION into $out ($(go version))" >&2

# Build into a scratch directory and rename at the end, so an interrupted build never leaves
# a half-written set of binaries that the check above would accept.
tmp="$(mktemp -d "$cache/kubernetes-v$VERSION.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

cd "$here/kubernetes"
start=$SECONDS
for bin in "${BINARIES[@]}"; do
    go build -trimpath -ldflags "$ldflags" -o "$tmp/$bin" "k8s.io/kubernetes/cmd/$bin" ||
        die "go build of $bin (k8s.io/kubernetes/cmd/$bin@v$VERSION) failed"
done

got="$("$tmp/kube-apiserver" --version 2>&1 | head -n1)"
[[ "$got" == "Kubernetes v$VERSION" ]] || die "built kube-apiserver reports '$got', expected 'Kubernetes v$VERSION'"

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "build-kubernetes.sh: built in $((SECONDS - start))s" >&2
echo "$out"
