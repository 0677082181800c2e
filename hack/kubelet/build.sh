#!/usr/bin/env bash
# Builds the upstream kubelet at the k8s.io/kubernetes version pinned in
# hack/kubelet/go.mod into a cache, and prints the binary's path on stdout.
#
#   hack/kubelet/build.sh            # -> /var/cache/aurae-cri/kubelet-v1.37.2
#   AURAE_CACHE_DIR=/tmp/c hack/kubelet/build.sh
#
# The build is skipped when the cached binary exists and answers --version
# with the pinned version. Concurrent callers are serialized with flock, and
# the binary is moved into place only once it is complete.
# A cold build takes several minutes on 2 cores (see README of the report /
# commit message); the module download is ~300 MB in GOMODCACHE.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The pinned version: "require k8s.io/kubernetes vX.Y.Z" or a line of a
# require block.
version="$(awk '$1 == "require" { $1 = "" ; $0 = $0 } $1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: no 'require k8s.io/kubernetes vX.Y.Z' line in $here/go.mod" >&2
  exit 1
fi
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/kubelet-$version"

answers() {
  [[ -x "$out" ]] && "$out" --version 2>/dev/null | grep -qx "Kubernetes $version"
}

if answers; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$out.lock"
flock 9
if answers; then # built by another caller while we waited
  echo "$out"
  exit 0
fi

export PATH="/usr/local/go/bin:$PATH"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -p=${KUBELET_BUILD_PARALLEL:-2}"

major="${version#v}"; major="${major%%.*}"
minor="${version#v*.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

tmp="$(mktemp "$out.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
start=$SECONDS
echo "build.sh: building kubelet $version into $out (GOFLAGS=$GOFLAGS)" >&2
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$tmp" .)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "build.sh: built kubelet $version in $((SECONDS - start))s" >&2
if ! answers; then
  echo "build.sh: $out --version does not say 'Kubernetes $version':" >&2
  "$out" --version >&2 || true
  exit 1
fi
echo "$out"
