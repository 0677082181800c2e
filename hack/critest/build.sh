#!/usr/bin/env bash
# Builds crictl and critest of sigs.k8s.io/cri-tools at the version pinned in
# hack/critest/go.mod (from the Go module proxy) into a cache, and prints the
# cache directory on stdout:
#
#   hack/critest/build.sh            # -> /var/cache/aurae-cri/cri-tools-v1.37.0/{crictl,critest,ginkgo}
#   AURAE_CACHE_DIR=/tmp/c hack/critest/build.sh
#
# critest is cri-tools' cmd/critest test binary (go test -c); crictl its CLI;
# ginkgo the CLI (at the version cri-tools requires) that critest -parallel N
# runs itself under.
# Nothing is built when both binaries exist and answer with the pinned
# version. Concurrent callers are serialized with flock; binaries are moved
# into place only once complete.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/cached-build.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(pinned_version sigs.k8s.io/cri-tools "$here")"
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/cri-tools-$version"

answers() {
  local c t
  [[ -x "$out/crictl" && -x "$out/critest" && -x "$out/ginkgo" ]] || return 1
  c="$("$out/crictl" --version 2>/dev/null)" || return 1
  t="$("$out/critest" -version 2>/dev/null)" || return 1
  [[ "$c" == "crictl version ${version#v}" && "$t" == *"critest version: ${version#v}"* ]]
}

show() {
  "$out/crictl" --version
  "$out/critest" -version
}

build() {
  local dest="$1"
  go_build_env 0
  local ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${version#v}"
  echo "build.sh: building crictl, critest and ginkgo (cri-tools $version) into $out" >&2
  mkdir "$dest"
  cd "$here"
  go build -trimpath -ldflags "$ldflags" -o "$dest/crictl" sigs.k8s.io/cri-tools/cmd/crictl
  go test -c -trimpath -ldflags "$ldflags" -o "$dest/critest" sigs.k8s.io/cri-tools/cmd/critest
  go build -trimpath -ldflags "-s -w" -o "$dest/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
  chmod 0755 "$dest/crictl" "$dest/critest" "$dest/ginkgo"
}

cached_build "$out" answers build show
echo "$out"
