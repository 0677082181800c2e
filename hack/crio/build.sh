#!/usr/bin/env bash
# Builds crio and pinns of github.com/cri-o/cri-o at the version pinned in
# hack/crio/go.mod (from the Go module proxy) into a cache, and prints the
# cache directory on stdout:
#
#   hack/crio/build.sh               # -> /var/cache/aurae-cri/crio-v1.36.3/{crio,pinns}
#   AURAE_CACHE_DIR=/tmp/c hack/crio/build.sh
#
# The benchmarks' CRI-O peer (test/e2e/bench_*_test.go); it runs containers
# under Debian's conmon. crio is built with cgo (libseccomp) and the tags
# CRI-O's Makefile picks on a host without gpgme, btrfs, SELinux or AppArmor;
# pinns is C, compiled from the module's pinns/src as its Makefile does.
# Nothing is built when both binaries exist and crio answers with the pinned
# version. Concurrent callers are serialized with flock; binaries are moved
# into place only once complete.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/cached-build.sh"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod=github.com/cri-o/cri-o
version="$(pinned_version "$mod" "$here")"
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/crio-$version"

answers() {
  [[ -x "$out/crio" && -x "$out/pinns" ]] || return 1
  "$out/crio" --version 2>/dev/null | grep -q "^crio version ${version#v}$"
}

show() { "$out/crio" --version; }

build() {
  local dest="$1" c o
  go_build_env 1
  local tags="containers_image_ostree_stub containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper seccomp"
  local ldflags="-s -w -X $mod/internal/version.buildCommit=$version"
  echo "build.sh: building crio and pinns $version into $out" >&2
  mkdir "$dest"
  cd "$here"
  go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$dest/crio" "$mod/cmd/crio"
  local src cc="${CC:-gcc}" objs=()
  src="$(go list -m -f '{{.Dir}}' "$mod")/pinns/src"
  for c in "$src"/*.c; do
    o="$(dirname "$dest")/$(basename "${c%.c}").o"
    "$cc" -std=c99 -Os -Wall -Werror -Wextra -static -O3 -o "$o" -c "$c"
    objs+=("$o")
  done
  "$cc" -o "$dest/pinns" "${objs[@]}" -std=c99 -Os -Wall -Werror -Wextra -static
  strip -s "$dest/pinns"
  chmod 0755 "$dest/crio" "$dest/pinns"
}

cached_build "$out" answers build show
echo "$out"
