#!/usr/bin/env bash
# Regenerates the small etcd files that bbolt/tests/damaged_files.rs, tests/tests/bbolt.rs and
# server/src/snapshot/etcd.rs's tests read. For each etcd release, one history on a
# single-member etcd (puts, an overwrite, deletions, a compaction, a leased key, a user and a
# role), kept twice: saved with `etcdctl snapshot save` as etcd-VERSION.db (so it ends with
# etcd's sha256 trailer), and the member's own backend file, copied once etcd has stopped, as
# etcd-VERSION-member.db (no trailer; a live file's layout: meta pages of two transactions, free
# pages). bbolt grows a live file in 16 MB steps; the copy is cut at the high-water mark (the
# meta pages' pgid times the page size), after checking that nothing but zeros lies past it.
# Usage: bbolt/testdata/make-fixtures.sh [VERSION...]  (default: every version below; the tests
# hold figures of each file, so remake only the version being added). 3.4.23 is Debian's
# etcd-server package; the others are built by tests/reference/build-etcd.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cut_at_high_water_mark() { # from to
  local page_size pgid0 pgid1 size
  page_size=$(od -An -tu4 -j 24 -N 4 "$1" | tr -d ' ')
  pgid0=$(od -An -tu8 -j 56 -N 8 "$1" | tr -d ' ')
  pgid1=$(od -An -tu8 -j $((page_size + 56)) -N 8 "$1" | tr -d ' ')
  size=$(((pgid0 > pgid1 ? pgid0 : pgid1) * page_size))
  if [[ $(tail -c +$((size + 1)) "$1" | tr -d '\0' | wc -c) != 0 ]]; then
    echo "make-fixtures.sh: $1 has data past its high-water mark ($size bytes)" >&2
    return 1
  fi
  head -c "$size" "$1" >"$2"
}
make_one() { # version etcd etcdctl
  local version=$1 etcd=$2 ctl=$3 dir port
  if [[ $("$etcd" --version | head -n1) != "etcd Version: $version" ]]; then
    echo "make-fixtures.sh: $etcd is not etcd $version" >&2
    return 1
  fi
  dir=$(mktemp -d)
  port=$((20000 + RANDOM % 10000))
  "$etcd" --data-dir "$dir/data" --listen-client-urls "http://127.0.0.1:$port" \
    --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((port + 1))" >"$dir/log" 2>&1 &
  local pid=$!
  local e=("$ctl" --endpoints "127.0.0.1:$port")
  for _ in $(seq 50); do "${e[@]}" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  for i in $(seq -w 1 30); do "${e[@]}" put "key/$i" "value $i" >/dev/null; done
  "${e[@]}" put key/01 overwritten >/dev/null
  "${e[@]}" del key/02 >/dev/null
  local rev lease
  rev=$("${e[@]}" put key/03 x -w json | sed 's/.*"revision":\([0-9]*\).*/\1/')
  "${e[@]}" compact "$rev" >/dev/null
  "${e[@]}" del key/1 --prefix >/dev/null
  lease=$("${e[@]}" lease grant 3600 | awk '{print $2}')
  "${e[@]}" put leased v --lease "$lease" >/dev/null
  "${e[@]}" user add alice:secret >/dev/null
  "${e[@]}" role add reader >/dev/null
  "${e[@]}" user grant-role alice reader >/dev/null
  "${e[@]}" snapshot save "$here/etcd-$version.db" >/dev/null 2>&1
  kill "$pid"; wait "$pid" || true
  cut_at_high_water_mark "$dir/data/member/snap/db" "$here/etcd-$version-member.db"
  rm -rf "$dir"
}
versions=("$@")
((${#versions[@]})) || versions=(3.7.3 3.6.16 3.5.36 3.4.23)
for version in "${versions[@]}"; do
  case $version in
    3.4.23) make_one "$version" /usr/bin/etcd /usr/bin/etcdctl ;;
    *)
      bin=$("$here/../../tests/reference/build-etcd.sh" "$version" | tail -n1)
      make_one "$version" "$bin/etcd" "$bin/etcdctl"
      ;;
  esac
done
