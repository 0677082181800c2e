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

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod=github.com/containerd/containerd/v2
version="$(awk '$1 == "require" { $1 = "" ; $0 = $0 } $1 == "'"$mod"'" { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: no 'require $mod vX.Y.Z' line in $here/go.mod" >&2
  exit 1
fi
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

if answers; then
  echo "$out"
  exit 0
fi

mkdir -p "$out"
exec 9>"$out.lock"
flock 9
if answers; then # built by another caller while we waited
  echo "$out"
  exit 0
fi

export PATH="/usr/local/go/bin:$PATH"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=1
export GOFLAGS="-mod=readonly -buildvcs=false"
tags="no_btrfs no_devmapper no_zfs"
ldflags="-s -w -X $mod/version.Version=$version -X $mod/version.Revision=$version -X $mod/version.Package=$mod"

tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "build.sh: building containerd and containerd-shim-runc-v2 $version into $out" >&2
(cd "$here" && go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/containerd" "$mod/cmd/containerd")
(cd "$here" && go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/containerd-shim-runc-v2" "$mod/cmd/containerd-shim-runc-v2")
chmod 0755 "$tmp/containerd" "$tmp/containerd-shim-runc-v2"
mv -f "$tmp/containerd" "$tmp/containerd-shim-runc-v2" "$out/"
echo "build.sh: built containerd $version in $((SECONDS - start))s" >&2
if ! answers; then
  echo "build.sh: $out/containerd or its shim does not answer version $version:" >&2
  "$out/containerd" --version >&2 || true
  "$out/containerd-shim-runc-v2" -v >&2 || true
  exit 1
fi
echo "$out"
