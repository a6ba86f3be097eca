#!/usr/bin/env bash
# Builds the oxcd binary of the previous release (with failpoints, as the test build has them),
# for the rolling-upgrade tests in tests/tests/upgrade.rs: a cluster of that release upgraded one
# member at a time to this one.
#
# Usage: tests/reference/build-oxcd-previous.sh [COMMIT]   (COMMIT defaults to a3286cd)
#   The last line of stdout is the directory holding the binary
#   ($HOME/.cache/oxcd-reference/oxcd-COMMIT, COMMIT abbreviated to 7 digits), so callers can do
#   OXCD_PREVIOUS_BIN="$(tests/reference/build-oxcd-previous.sh | tail -n1)/oxcd".
#   Everything else (progress, cargo's output) goes to stderr. A cached binary is not rebuilt.
#
# The build shares the workspace's target dir (its dependencies are mostly the same, so only
# what changed since compiles). It links the RocksDB library the workspace's debug build
# compiled when that is the same RocksDB release (the longest part of a cold build: the two
# builds enable different features of the rocksdb crate, so cargo would compile its C++ twice),
# so run it AFTER building the workspace, as ./dev test does. It leaves its binary at
# `$CARGO_TARGET_DIR/debug/oxcd`; the workspace's next `cargo build` puts the current one back.
set -euo pipefail

SCRIPT=build-oxcd-previous.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel)"
cache="${HOME:?HOME must be set}/.cache/oxcd-reference"

die() {
    echo "$SCRIPT: error: $*" >&2
    exit 1
}

requested="${1:-a3286cd}"
commit="$(git -C "$repo" rev-parse --verify --quiet "$requested^{commit}")" ||
    die "$requested is not a commit of $repo"
out="$cache/oxcd-$(git -C "$repo" rev-parse --short=7 "$commit")"

is_built() {
    [[ -x "$1/oxcd" ]] && "$1/oxcd" --version >/dev/null 2>&1
}

if is_built "$out"; then
    echo "$out"
    exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo is not installed; install Rust (https://rustup.rs) first"

mkdir -p "$cache"
# Two test runs may start at once; the second waits for the first instead of racing it.
exec 9>"$out.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if is_built "$out"; then
    echo "$out"
    exit 0
fi

# The release's sources, exactly as committed: a scratch copy, not a worktree, so the clone's own
# state (its worktrees, index, untracked files) is never touched.
src="$(mktemp -d "${TMPDIR:-/tmp}/oxcd-previous.XXXXXX")"
tmp="$(mktemp -d "$out.tmp.XXXXXX")"
trap 'rm -rf "$src" "$tmp"' EXIT
git -C "$repo" archive --format=tar "$commit" | tar -xf - -C "$src"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxcd-target}"
echo "$SCRIPT: building oxcd at $commit into $out (target dir $CARGO_TARGET_DIR)" >&2
start=$SECONDS

# The newest debug build of the same librocksdb-sys release in the target dir, if any: its build
# script's output names the crate's source dir, which ends in the version.
rocksdb_version="$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$src/Cargo.lock")"
rocksdb_lib_dir=""
if [[ -n "$rocksdb_version" ]]; then
    rocksdb_lib_dir="$(
        grep -lx "cargo:cargo_manifest_dir=.*/librocksdb-sys-$rocksdb_version" \
            "$CARGO_TARGET_DIR"/debug/build/librocksdb-sys-*/output 2>/dev/null |
            while read -r output; do
                lib="$(dirname "$output")/out/librocksdb.a"
                if [[ -f "$lib" ]]; then
                    echo "$(stat -c %Y "$lib") $(dirname "$lib")"
                fi
            done | sort -n | tail -n1 | cut -d' ' -f2-
    )" || rocksdb_lib_dir="" # none there (grep found nothing): the build compiles RocksDB
fi
rocksdb_env=()
if [[ -n "$rocksdb_lib_dir" ]]; then
    echo "$SCRIPT: linking RocksDB $rocksdb_version from $rocksdb_lib_dir" >&2
    rocksdb_env=(ROCKSDB_LIB_DIR="$rocksdb_lib_dir" ROCKSDB_STATIC=1)
fi

# --locked: the release's own Cargo.lock, the dependency versions it shipped with.
(cd "$src" && env "${rocksdb_env[@]}" cargo build --locked -p oxcd --bin oxcd --features failpoints >&2) ||
    die "cargo build of oxcd at $commit failed"
cp "$CARGO_TARGET_DIR/debug/oxcd" "$tmp/oxcd"
is_built "$tmp" || die "the oxcd built at $commit does not run"

# Published whole: an interrupted build never leaves a binary that is_built would accept.
chmod 755 "$tmp"
rm -rf "$out"
mv "$tmp" "$out"
echo "$SCRIPT: built in $((SECONDS - start))s" >&2
echo "$out"
