#!/usr/bin/env bash
# Compiles Kubernetes v1.37.2's own integration tests that exercise the store (`go test -c`, one
# test binary per package), so they can run on oxcd and on etcd (run-kube-integration.sh).
#
# Usage: tests/reference/build-kube-integration.sh
#   The last line of stdout is the directory holding <package>.test for each package below
#   ($HOME/.cache/oxcd-reference/kube-integration-v1.37.2), so callers can do
#   KUBE_INTEGRATION_BIN_DIR="$(tests/reference/build-kube-integration.sh | tail -n1)".
#   Everything else (progress, go's output) goes to stderr.
#   Run each test binary from src/test/integration/<package> in that directory, with
#   TEST_SRCDIR=<that directory>/trimpath and TEST_WORKSPACE=. (see build_into).
#
# The packages come from the same wrapper module as build-kubernetes.sh's binaries
# (./kubernetes, whose go.sum already covers their test dependencies), so they test exactly the
# apiserver that build-kubernetes.sh builds. Each links a whole control plane: a cold build takes
# tens of minutes, less once build-kubernetes.sh has filled the Go build cache.
set -euo pipefail

VERSION=1.37.2
# test/integration/<name>: every test in them starts an apiserver in-process through
# test/integration/framework, whose EtcdMain uses the store at $KUBE_INTEGRATION_ETCD_URL.
#   etcd          every built-in resource's storage path and encoding, CRD/built-in overlaps
#   apimachinery  watches (restarts, timeouts, namespaces), watch-list fallback, empty lists
#   apiserver     lists (options, chunking, RV=0), watches, the watch cache, patches, apply
#   garbagecollector  cascading deletion through owner references, driven by informers' watches
#   namespace     a namespace's deletion removing everything in it
PACKAGES=(etcd apimachinery apiserver garbagecollector namespace)
SCRIPT=build-kube-integration.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=go-build.sh
source "$here/go-build.sh"

# What a build records, so a change of version, package list or layout rebuilds.
stamp="k8s.io/kubernetes v$VERSION test/integration/{${PACKAGES[*]}} src-tree trimpath-tree"

is_built() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        [[ -x "$1/$pkg.test" ]] || return 1
    done
    [[ "$(cat "$1/built-from" 2>/dev/null)" == "$stamp" ]]
}

build_into() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        echo "$SCRIPT: go test -c k8s.io/kubernetes/test/integration/$pkg" >&2
        # vet is for Kubernetes' CI; these binaries only run.
        go test -c -vet=off -trimpath -o "$1/$pkg.test" "k8s.io/kubernetes/test/integration/$pkg" ||
            die "go test -c of k8s.io/kubernetes/test/integration/$pkg@v$VERSION failed"
    done
    # Where the tests look for files of Kubernetes' repository: TestEtcdStoragePath globs
    # k8s.io/api's serialization fixtures at ../../../staging/src/k8s.io/api/testdata from its
    # package directory, which the module zip of k8s.io/kubernetes has no staging/ for. src/ lays
    # the packages and k8s.io/api out as the repository does, in symlinks into the module cache.
    mkdir -p "$1/src/test/integration" "$1/src/staging/src/k8s.io"
    for pkg in "${PACKAGES[@]}"; do
        cp -rs "$GOMODCACHE/k8s.io/kubernetes@v$VERSION/test/integration/$pkg" "$1/src/test/integration/$pkg"
    done
    ln -s "$GOMODCACHE/k8s.io/api@v0.${VERSION#*.}" "$1/src/staging/src/k8s.io/api"
    # The test servers of kube-apiserver and apiextensions-apiserver keep their serving
    # certificates in testdata/ next to their source, found from its file name: under -trimpath
    # that is module@version/path, which they resolve under $TEST_SRCDIR/$TEST_WORKSPACE (the
    # variables they read for Bazel's trimmed builds). trimpath/ holds those two directories under
    # the names the binaries carry (a replaced staging module is named by its required version,
    # v0.0.0), writable, since a missing certificate is generated and written there.
    local staging="v0.${VERSION#*.}" module name
    for module in "kubernetes@v$VERSION=kubernetes@v$VERSION/cmd/kube-apiserver/app/testing" \
        "apiextensions-apiserver@$staging=apiextensions-apiserver@v0.0.0/pkg/cmd/server/testing"; do
        name="${module#*=}"
        mkdir -p "$1/trimpath/k8s.io/$(dirname "$name")"
        cp -rs "$GOMODCACHE/k8s.io/${module%%=*}/${name#*/}" "$1/trimpath/k8s.io/$name"
    done
    # The module cache's directories are read-only, and cp copied that.
    chmod -R u+w "$1/src" "$1/trimpath"
    echo "$stamp" >"$1/built-from"
}

build_reference "$cache/kube-integration-v$VERSION" "$here/kubernetes" \
    "Kubernetes v$VERSION's integration tests (${PACKAGES[*]})"
