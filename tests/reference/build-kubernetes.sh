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
SCRIPT=build-kubernetes.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=go-build.sh
source "$here/go-build.sh"

is_built() {
    local bin
    for bin in "${BINARIES[@]}"; do
        [[ -x "$1/$bin" ]] || return 1
    done
    "$1/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes v$VERSION"
}

build_into() {
    # What hack/lib/version.sh stamps into a release build. Without it the binaries report
    # v0.0.0-master, and kubectl and the apiserver's version checks treat them as a different
    # release.
    local minor="${VERSION#*.}" ldflags="-s -w" pkg bin
    minor="${minor%%.*}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=v$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    for bin in "${BINARIES[@]}"; do
        go build -trimpath -ldflags "$ldflags" -o "$1/$bin" "k8s.io/kubernetes/cmd/$bin" ||
            die "go build of $bin (k8s.io/kubernetes/cmd/$bin@v$VERSION) failed"
    done
}

build_reference "$cache/kubernetes-v$VERSION" "$here/kubernetes" "Kubernetes v$VERSION"
