#!/bin/bash
# Times `etcdctl move-leader` on a fresh local 3-member cluster: ./benches/move-leader.sh BINARY
# [LABEL] starts three members of BINARY (oxcd or etcd, same flags) on ports 31379-31400 in a
# temporary directory, moves leadership five times, each to a follower, and prints how long
# each etcdctl call took (process start included) and who leads after it. Needs etcdctl.
set -euo pipefail
bin=$1
label=${2:-$(basename "$bin")}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
initial="a=http://127.0.0.1:31380,b=http://127.0.0.1:31390,c=http://127.0.0.1:31400"
i=0
for name in a b c; do
  client=http://127.0.0.1:$((31379 + 10 * i))
  peer=http://127.0.0.1:$((31380 + 10 * i))
  "$bin" --name "$name" --data-dir "$dir/$name" --listen-client-urls "$client" \
    --advertise-client-urls "$client" --listen-peer-urls "$peer" \
    --initial-advertise-peer-urls "$peer" --initial-cluster "$initial" \
    --initial-cluster-token move-leader --log-level error >"$dir/$name.log" 2>&1 &
  i=$((i + 1))
done
sleep 5
endpoints=127.0.0.1:31379,127.0.0.1:31389,127.0.0.1:31399
# Prints the leader's endpoint, a follower's id and the leader's id.
leader() {
  etcdctl --endpoints=$endpoints endpoint status -w json | python3 -c '
import json, sys
d = json.load(sys.stdin)
lead = d[0]["Status"]["leader"]
ep = [x["Endpoint"] for x in d if x["Status"]["header"]["member_id"] == lead][0]
other = [x["Status"]["header"]["member_id"] for x in d if x["Status"]["header"]["member_id"] != lead][0]
print(ep, format(other, "x"), format(lead, "x"))'
}
for round in 1 2 3 4 5; do
  read -r at target _ < <(leader)
  start=$(date +%s%N)
  etcdctl --endpoints="$at" move-leader "$target" >/dev/null
  end=$(date +%s%N)
  read -r _ _ now < <(leader)
  echo "$label move-leader $round: $(((end - start) / 1000000)) ms (target $target, leader now $now)"
done
