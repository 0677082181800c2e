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
source "$(dirname "${BASH_SOURCE[0]}")/../lib/cached-build.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The pinned version: "require k8s.io/kubernetes vX.Y.Z" or a line of a
# require block.
version="$(pinned_version k8s.io/kubernetes "$here")"
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/kubelet-$version"

answers() {
  [[ -x "$out" ]] && "$out" --version 2>/dev/null | grep -qx "Kubernetes $version"
}

show() { "$out" --version; }

build() {
  local dest="$1"
  go_build_env 0
  GOFLAGS+=" -p=${KUBELET_BUILD_PARALLEL:-2}"
  local major minor pkg=k8s.io/component-base/version ldflags
  major="${version#v}"; major="${major%%.*}"
  minor="${version#v*.}"; minor="${minor%%.*}"
  ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  echo "build.sh: building kubelet $version into $out (GOFLAGS=$GOFLAGS)" >&2
  cd "$here"
  go build -trimpath -ldflags "$ldflags" -o "$dest" .
  chmod 0755 "$dest"
}

cached_build "$out" answers build show
echo "$out"
