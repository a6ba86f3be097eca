#!/usr/bin/env bash
# Prepares Python's asyncio etcd client aetcd (from PyPI) with its own integration tests, for
# tests/tests/client_libraries.rs: a venv holding aetcd and the exact test tools its `test` extra
# pins (pytest, pytest-asyncio, pytest-mock, pytest-cov), and its sdist unpacked (the wheel has
# no tests; the sdist has tests/integration/ and the pytest settings in pyproject.toml).
#
# Usage: tests/reference/prepare-aetcd.sh [VERSION]   (VERSION defaults to 1.0.0)
#   The last line of stdout is the prepared directory
#   ($HOME/.cache/oxcd-clients/aetcd-VERSION, holding venv/ and src/), so callers can do
#   AETCD_DIR="$(tests/reference/prepare-aetcd.sh | tail -n1)".
#   Everything else (progress, pip's output) goes to stderr. A prepared directory is reused.
set -euo pipefail

SCRIPT=prepare-aetcd.sh
VERSION="${1:-1.0.0}"
cache="${HOME:?HOME must be set}/.cache/oxcd-clients"
out="$cache/aetcd-$VERSION"
# Written last: a venv cannot be built elsewhere and moved into place (its scripts name their
# interpreter by absolute path), so this marks a preparation that ran to the end.
stamp="$out/prepared"

die() {
    echo "$SCRIPT: error: $*" >&2
    exit 1
}

is_prepared() {
    [[ -f "$stamp" && -x "$out/venv/bin/pytest" && -f "$out/src/tests/integration/test_auth.py" ]]
}

if is_prepared; then
    echo "$out"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is not installed (Debian: python3, python3-venv)"

mkdir -p "$cache"
# Two test runs may start at once; the second waits for the first instead of racing it.
exec 9>"$out.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if is_prepared; then
    echo "$out"
    exit 0
fi

rm -rf "$out"
mkdir -p "$out"
echo "$SCRIPT: preparing aetcd $VERSION in $out ($(python3 --version))" >&2
python3 -m venv "$out/venv" ||
    die "python3 -m venv failed (Debian needs the python3-venv package; ./dev test installs it)"
pip=("$out/venv/bin/python" -m pip --disable-pip-version-check)

# The sdist, for its tests; --no-binary keeps pip from taking the wheel instead.
"${pip[@]}" download --quiet --no-deps --no-binary=:all: --dest "$out/download" "aetcd==$VERSION" >&2 ||
    die "pip could not download aetcd $VERSION's sdist"
mkdir -p "$out/src"
tar -xzf "$out/download/aetcd-$VERSION.tar.gz" -C "$out/src" --strip-components=1

# The library as its users get it, and the test extra's pins as its own CI installs them.
"${pip[@]}" install --quiet "aetcd[test]==$VERSION" >&2 ||
    die "pip could not install aetcd[test]==$VERSION"

touch "$stamp"
is_prepared || die "the preparation in $out is incomplete"
echo "$out"
