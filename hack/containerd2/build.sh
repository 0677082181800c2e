#!/usr/bin/env bash
# Builds containerd and containerd-shim-runc-v2 of github.com/containerd/containerd/v2
# at the version pinned in hack/containerd2/go.mod (from the Go module proxy)
# into a cache, and prints the cache directory on stdout:
#
#   hack/containerd2/build.sh        # -> /var/cache/aurae-cri/containerd-v2.2.9/{containerd,containerd-shim-runc-v2}
#   AURAE_CACHE_DIR=/tmp/c hack/containerd2/build.sh
#
# The benchmarks' containerd 2.x peer (test/e2e/bench_*_test.go). Built with
# cgo and the tags no_btrfs no_devmapper no_zfs (no snapshotters that need
# their libraries or kernel features). Nothing is built when both binaries
# exist and answer with the pinned version. Concurrent callers are serialized
# with flock; binaries are moved into place only once complete.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/cached-build.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod=github.com/containerd/containerd/v2
version="$(pinned_version "$mod" "$here")"
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/containerd-$version"

answers() {
  local v
  [[ -x "$out/containerd" && -x "$out/containerd-shim-runc-v2" ]] || return 1
  v="$("$out/containerd" --version 2>/dev/null)" || return 1
  [[ "$v" == "containerd $mod $version "* ]] || return 1
  v="$("$out/containerd-shim-runc-v2" -v 2>/dev/null)" || return 1
  [[ "$v" == *"Version:  $version"* ]]
}

show() {
  "$out/containerd" --version
  "$out/containerd-shim-runc-v2" -v
}

build() {
  local dest="$1"
  go_build_env 1
  local tags="no_btrfs no_devmapper no_zfs"
  local ldflags="-s -w -X $mod/version.Version=$version -X $mod/version.Revision=$version -X $mod/version.Package=$mod"
  echo "build.sh: building containerd and containerd-shim-runc-v2 $version into $out" >&2
  mkdir "$dest"
  cd "$here"
  go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$dest/containerd" "$mod/cmd/containerd"
  go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$dest/containerd-shim-runc-v2" "$mod/cmd/containerd-shim-runc-v2"
  chmod 0755 "$dest/containerd" "$dest/containerd-shim-runc-v2"
}

cached_build "$out" answers build show
echo "$out"
