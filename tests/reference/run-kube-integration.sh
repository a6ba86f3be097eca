#!/usr/bin/env bash
# Runs Kubernetes' own integration tests that exercise the store (built by
# build-kube-integration.sh) on a fresh single-member oxcd and on a fresh etcd 3.7, and writes a
# markdown table of every top-level test's result on each.
#
# Usage: tests/reference/run-kube-integration.sh [--store oxcd|etcd|both] [-run REGEX]
#            [--packages "etcd apimachinery apiserver"] [--timeout 60m] [--out FILE] [--parallel]
#   --store     which store(s) to run on (default both: etcd first, as calibration)
#   -run        go test's -run regex for the top-level tests (default: all)
#   --packages  which test/integration packages (default: every one built)
#   --timeout   go test's -timeout per package and store (default 60m)
#   --out       the markdown file (default tests/results/kube-integration-<date>.md)
#   --parallel  run the stores at the same time (each still runs its packages one by one)
# Environment: OXCD_BIN (default $CARGO_TARGET_DIR/release/oxcd), ETCD37_BIN (default the one
# build-etcd.sh builds), KUBE_INTEGRATION_BIN_DIR (default: build-kube-integration.sh's output),
# KUBE_INTEGRATION_LOG_DIR (each run's full output; default a new directory under /tmp).
#
# Each package runs once per store, on a store of its own started here; KUBE_INTEGRATION_ETCD_URL
# points at it, so framework.EtcdMain uses it instead of starting etcd. The few tests that start
# stores of their own (framework.RunCustomEtcd: the watch cache's two-store setup, watch-list
# with progress notifications) run the `etcd` found on PATH; PATH starts with a directory whose
# `etcd` is the store under test, so those run on oxcd too in oxcd's run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
VERSION=1.37.2

die() {
    echo "run-kube-integration.sh: error: $*" >&2
    exit 1
}

command_line="run-kube-integration.sh $*"
stores=(etcd oxcd)
run_regex=.
packages=""
timeout=60m
parallel=0
out="$repo/tests/results/kube-integration-$(date -u +%F).md"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --store)
            case "${2:-}" in
                oxcd | etcd) stores=("$2") ;;
                both) stores=(etcd oxcd) ;;
                *) die "--store takes oxcd, etcd or both" ;;
            esac
            shift 2
            ;;
        -run | --run) run_regex="${2:?-run needs a regex}"; shift 2 ;;
        --packages) packages="${2:?--packages needs a list}"; shift 2 ;;
        --timeout) timeout="${2:?--timeout needs a duration}"; shift 2 ;;
        --out) out="${2:?--out needs a file}"; shift 2 ;;
        --parallel) parallel=1; shift ;;
        *) sed -n '6,14p' "$0" >&2; exit 2 ;;
    esac
done

bin_dir="${KUBE_INTEGRATION_BIN_DIR:-$("$here/build-kube-integration.sh" | tail -n1)}"
if [[ -z "$packages" ]]; then
    packages="$(cd "$bin_dir" && ls -- *.test | sed 's/\.test$//' | tr '\n' ' ')"
fi
oxcd_bin="${OXCD_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/oxcd-target}/release/oxcd}"
etcd_bin="${ETCD37_BIN:-$HOME/.cache/oxcd-reference/etcd-v3.7.3/etcd}"
etcdctl="$(dirname "$etcd_bin")/etcdctl"
[[ -x "$oxcd_bin" ]] || die "no oxcd at $oxcd_bin (cargo build --release -p oxcd, or set OXCD_BIN)"
[[ -x "$etcd_bin" && -x "$etcdctl" ]] || die "no etcd 3.7 at $etcd_bin (tests/reference/build-etcd.sh, or set ETCD37_BIN)"
sources="$bin_dir/src/test/integration"
[[ -d "$sources" ]] || die "no Kubernetes sources at $sources (build-kube-integration.sh lays them out)"
log_dir="${KUBE_INTEGRATION_LOG_DIR:-$(mktemp -d /tmp/oxcd-kube-integration.XXXXXX)}"
mkdir -p "$log_dir"

# A port nothing listens on, below the kernel's ephemeral range.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

store_pid=""
work=""
stop_store() {
    if [[ -n "$store_pid" ]]; then
        kill "$store_pid" 2>/dev/null || true
        wait "$store_pid" 2>/dev/null || true
        store_pid=""
    fi
    [[ -z "$work" ]] || rm -rf "$work"
    work=""
}

# start_store oxcd|etcd LOG: a fresh member on free ports; sets store_url, store_pid and work.
start_store() {
    local binary client peer
    case "$1" in
        oxcd) binary="$oxcd_bin" ;;
        etcd) binary="$etcd_bin" ;;
    esac
    work="$(mktemp -d /tmp/oxcd-kube-integration-store.XXXXXX)"
    mkdir "$work/bin"
    ln -s "$binary" "$work/bin/etcd"
    client="http://127.0.0.1:$(free_port)"
    peer="http://127.0.0.1:$(free_port)"
    # The flags hack/lib/etcd.sh and framework.RunCustomEtcd give etcd for integration tests.
    "$binary" --name default --data-dir "$work/data" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "default=$peer" --log-level warn \
        --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) >"$2" 2>&1 &
    store_pid=$!
    store_url="$client"
    local deadline=$((SECONDS + 30))
    until "$etcdctl" --endpoints "$client" --command-timeout 2s put /oxcd-kube-integration/ready 1 >/dev/null 2>&1; do
        kill -0 "$store_pid" 2>/dev/null || die "$1 exited at start (see $2)"
        ((SECONDS < deadline)) || die "$1 at $client not ready within 30s (see $2)"
        sleep 0.5
    done
    "$etcdctl" --endpoints "$client" del /oxcd-kube-integration/ready >/dev/null
}

# Top-level results of one `go test -v` log, as "test<TAB>PASS|FAIL|SKIP<TAB>seconds" lines;
# a test that started and has no result (the binary timed out or crashed) is a FAIL.
results_of() {
    awk '
        match($0, /^=== RUN   Test[^ \/]+$/) { name = substr($0, 11); if (!(name in result)) { order[++n] = name; result[name] = "" } }
        match($0, /--- (PASS|FAIL|SKIP): Test[^ \/]+ \([0-9.]+s\)/) {
            split(substr($0, RSTART + 4, RLENGTH - 4), f, /[: ()]+/)
            if (!(f[2] in result)) order[++n] = f[2]
            result[f[2]] = f[1]; secs[f[2]] = f[3]
        }
        END {
            for (i = 1; i <= n; i++) {
                t = order[i]
                if (result[t] == "") print t "\tFAIL\tno result (timeout or crash)"
                else print t "\t" result[t] "\t" secs[t]
            }
        }' "$1"
}

# run_on STORE: every package on STORE, appending to $log_dir/STORE.tsv and STORE.exit.tsv.
run_on() {
    local store="$1" pkg log status
    trap stop_store EXIT
    for pkg in $packages; do
        [[ -x "$bin_dir/$pkg.test" ]] || die "no $bin_dir/$pkg.test (build-kube-integration.sh builds it)"
        log="$log_dir/$store-$pkg.log"
        start_store "$store" "$log_dir/$store-$pkg.store.log"
        echo "run-kube-integration.sh: $pkg on $store ($store_url), log $log" >&2
        status=0
        # Where build-kube-integration.sh says to run them.
        (cd "$sources/$pkg" &&
            PATH="$work/bin:$PATH" KUBE_INTEGRATION_ETCD_URL="$store_url" \
                TEST_SRCDIR="$bin_dir/trimpath" TEST_WORKSPACE=. \
                nice -n 19 "$bin_dir/$pkg.test" -test.v -test.timeout "$timeout" -test.run "$run_regex") \
            >"$log" 2>&1 || status=$?
        stop_store
        results_of "$log" | sed "s/^/$store\t$pkg\t/" >>"$log_dir/$store.tsv"
        echo "run-kube-integration.sh: $pkg on $store exited $status:" \
            "$(grep -c "^$store	$pkg	.*	PASS	" "$log_dir/$store.tsv") passed," \
            "$(grep -c "^$store	$pkg	.*	FAIL	" "$log_dir/$store.tsv") failed" >&2
        echo -e "$store\t$pkg\t(exit status)\t$status" >>"$log_dir/$store.exit.tsv"
    done
}

runs=()
for store in "${stores[@]}"; do
    : >"$log_dir/$store.tsv"
    : >"$log_dir/$store.exit.tsv"
    if ((parallel)); then
        (run_on "$store") &
        runs+=($!)
    else
        (run_on "$store")
    fi
done
for run in "${runs[@]}"; do
    wait "$run"
done
table="$log_dir/results.tsv"
for store in "${stores[@]}"; do cat "$log_dir/$store.tsv"; done >"$table"
for store in "${stores[@]}"; do cat "$log_dir/$store.exit.tsv"; done >"$log_dir/exit-status.tsv"

# The markdown: one row per test, one column per store.
mkdir -p "$(dirname "$out")"
{
    echo "# Kubernetes v$VERSION's storage integration tests on oxcd and etcd"
    echo
    echo "Run $(date -u '+%F %H:%M UTC') by \`$command_line\`: packages test/integration/{${packages% }}," \
        "oxcd $oxcd_bin ($("$oxcd_bin" --version 2>&1 | head -n1); the checkout is at $(git -C "$repo" describe --always --dirty))," \
        "$("$etcd_bin" --version 2>&1 | head -n1). One fresh single-member store per package;" \
        "each cell is the top-level test's result and go test's time for it."
    echo
} >"$out"
python3 - "$table" "$log_dir/exit-status.tsv" "${stores[@]}" >>"$out" <<'EOF'
import sys
from collections import OrderedDict

table, statuses, stores = sys.argv[1], sys.argv[2], sys.argv[3:]
names = {"oxcd": "oxcd", "etcd": "etcd 3.7.3"}
rows = OrderedDict()
for line in open(table):
    store, pkg, test, result, detail = line.rstrip("\n").split("\t")
    rows.setdefault((pkg, test), {})[store] = (result, detail)
exits = [line.rstrip("\n").split("\t") for line in open(statuses)]

def cell(r):
    return f"{r[0]} ({r[1]})" if r else "not run"

print("| package | test | " + " | ".join(names[s] for s in stores) + " |")
print("| --- | --- |" + " --- |" * len(stores))
for (pkg, test), by_store in rows.items():
    print(f"| {pkg} | {test} | " + " | ".join(cell(by_store.get(s)) for s in stores) + " |")
print()
for s in stores:
    counts = {k: sum(1 for r in rows.values() if r.get(s, ("",))[0] == k) for k in ("PASS", "FAIL", "SKIP")}
    print(f"- {names[s]}: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
print("- exit status of each test binary: " + ", ".join(f"{pkg} on {names[s]}: {st}" for s, pkg, _, st in exits))
if set(stores) == {"oxcd", "etcd"}:
    def failed(r, s):
        return r.get(s, ("",))[0] == "FAIL"
    only = [k for k, r in rows.items() if failed(r, "oxcd") and not failed(r, "etcd")]
    calibration = [k for k, r in rows.items() if failed(r, "etcd")]
    print()
    print("Failures on oxcd only: " + (", ".join(f"{p}/{t}" for p, t in only) or "none"))
    print()
    print("Calibration failures (fail on etcd 3.7.3 too): " + (", ".join(f"{p}/{t}" for p, t in calibration) or "none"))
EOF
echo "run-kube-integration.sh: results in $out, logs in $log_dir" >&2
