#!/usr/bin/env bash
# Regenerates the small snapshot files bbolt/tests/damaged_files.rs reads and mutates: a single-member
# etcd with puts, an overwrite, deletions, a compaction, a leased key, a user and a role, saved
# with `etcdctl snapshot save` (so each file ends with etcd's sha256 trailer).
# Usage: bbolt/testdata/make-fixtures.sh  (etcd 3.7 from tests/reference/build-etcd.sh, 3.4 from
# Debian's etcd-server package).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
make_one() { # name etcd etcdctl
  local name=$1 etcd=$2 ctl=$3 dir port
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
  "${e[@]}" snapshot save "$here/$name.db" >/dev/null 2>&1
  kill "$pid"; wait "$pid" || true
  rm -rf "$dir"
}
make_one etcd-3.7.3 "$HOME/.cache/oxcd-reference/etcd-v3.7.3/etcd" "$HOME/.cache/oxcd-reference/etcd-v3.7.3/etcdctl"
make_one etcd-3.4.23 /usr/bin/etcd /usr/bin/etcdctl
