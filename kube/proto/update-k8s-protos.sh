#!/usr/bin/env bash
# Refreshes the Kubernetes .proto files `oxcdctl registry` and `oxcd-kube` encode and decode with, from the Go module cache.
# Usage: kube/proto/update-k8s-protos.sh [VERSION]   (e.g. v0.37.2 = Kubernetes 1.37; keep
# jsonhints/go.mod on the same version)
# Only kinds that kube-apiserver stores are kept, and `//` comment lines are dropped: they are
# most of the bytes and the descriptors never need them.
set -euo pipefail
version="${1:-v0.37.2}"
cd "$(dirname "$0")"
go mod download "k8s.io/api@$version" "k8s.io/apimachinery@$version" \
  "k8s.io/apiextensions-apiserver@$version" "k8s.io/kube-aggregator@$version"
cache="$(go env GOMODCACHE)/k8s.io"
rm -rf k8s.io
for module in api apimachinery apiextensions-apiserver kube-aggregator; do
  (cd "$cache/$module@$version" && find . -name generated.proto) | while read -r file; do
    case "$file" in
      # Request/response-only groups and test types never reach etcd.
      ./admission/* | ./apidiscovery/* | ./authentication/* | ./authorization/* | ./imagepolicy/* | \
        ./pkg/apis/testapigroup/* | ./pkg/apis/meta/v1beta1/* | ./pkg/apis/apiextensions/internal*) continue ;;
    esac
    target="k8s.io/$module/${file#./}"
    mkdir -p "$(dirname "$target")"
    grep -v '^[[:space:]]*//' "$cache/$module@$version/$file" | cat -s >"$target"
  done
done
echo "$version" >k8s.io/VERSION
(cd jsonhints && go run .) >k8s.io/json-hints.txt
