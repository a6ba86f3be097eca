# Sourced by the build-*.sh scripts here: what every reference build from the Go module proxy
# shares (the caches, the Go environment, the lock, publishing the result whole).
#
# A script sets SCRIPT (its name, for messages), defines `is_built DIR` (true when DIR holds a
# complete build) and `build_into DIR` (builds into the empty DIR, in the module directory it
# is given), then calls `build_reference OUT MODULE_DIR WHAT` as its last command. That prints OUT
# as the last line of stdout; progress and go's output go to stderr.

cache="${HOME:?HOME must be set}/.cache/oxcd-reference"

die() {
    echo "$SCRIPT: error: $*" >&2
    exit 1
}

# build_reference OUT MODULE_DIR WHAT
build_reference() {
    local out="$1" module="$2" what="$3"
    if is_built "$out"; then
        echo "$out"
        return 0
    fi

    command -v go >/dev/null 2>&1 ||
        die "go is not installed (Go >= 1.26 is needed to build $what); put a Go >= 1.26 toolchain on PATH (Debian's golang-go is too old)"

    mkdir -p "$cache"
    # Two test runs may start at once; the second waits for the first instead of racing it.
    exec 9>"$cache/$(basename "$out").lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if is_built "$out"; then
        echo "$out"
        return 0
    fi

    # Shared by every reference build: etcd and Kubernetes have many modules in common, and the
    # Kubernetes test binaries reuse kube-apiserver's compiled packages. Under $HOME/.cache, so
    # repeated CI runs on the same machine reuse them (a cold build takes minutes to tens of
    # minutes, a warm one seconds).
    export GOMODCACHE="$cache/gomod"
    export GOCACHE="$cache/gocache"
    # The go.mod files ask for go 1.26; never download another toolchain, fail instead with go's
    # own "requires go >= …" message.
    export GOTOOLCHAIN=local
    # -mod=readonly: go.sum is committed, so a mismatch must fail rather than be silently
    # rewritten. Setting GOFLAGS also drops whatever the caller's environment put there.
    export GOFLAGS=-mod=readonly
    # etcd's and Kubernetes' release builds are static (CGO_ENABLED=0); this also avoids needing
    # a C compiler, and every build here shares the same compiled packages.
    export CGO_ENABLED=0

    echo "$SCRIPT: building $what into $out ($(go version))" >&2

    # Build into a scratch directory and rename at the end, so an interrupted build never leaves
    # a half-written set of binaries that is_built would accept.
    tmp="$(mktemp -d "$out.tmp.XXXXXX")"
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT

    local start=$SECONDS
    (cd "$module" && build_into "$tmp")
    is_built "$tmp" || die "the build of $what in $tmp is incomplete or reports another version"

    rm -rf "$out"
    mv "$tmp" "$out"
    trap - EXIT
    echo "$SCRIPT: built in $((SECONDS - start))s" >&2
    echo "$out"
}
