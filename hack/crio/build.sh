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

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod=github.com/cri-o/cri-o
version="$(awk '$1 == "require" { $1 = "" ; $0 = $0 } $1 == "'"$mod"'" { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: no 'require $mod vX.Y.Z' line in $here/go.mod" >&2
  exit 1
fi
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/crio-$version"

answers() {
  [[ -x "$out/crio" && -x "$out/pinns" ]] || return 1
  "$out/crio" --version 2>/dev/null | grep -q "^crio version ${version#v}$"
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
tags="containers_image_ostree_stub containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper seccomp"
ldflags="-s -w -X $mod/internal/version.buildCommit=$version"

tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "build.sh: building crio and pinns $version into $out" >&2
(cd "$here" && go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/crio" "$mod/cmd/crio")
src="$(cd "$here" && go list -m -f '{{.Dir}}' "$mod")/pinns/src"
cc="${CC:-gcc}"
objs=()
for c in "$src"/*.c; do
  o="$tmp/$(basename "${c%.c}").o"
  "$cc" -std=c99 -Os -Wall -Werror -Wextra -static -O3 -o "$o" -c "$c"
  objs+=("$o")
done
"$cc" -o "$tmp/pinns" "${objs[@]}" -std=c99 -Os -Wall -Werror -Wextra -static
strip -s "$tmp/pinns"
chmod 0755 "$tmp/crio" "$tmp/pinns"
mv -f "$tmp/crio" "$tmp/pinns" "$out/"
echo "build.sh: built crio and pinns $version in $((SECONDS - start))s" >&2
if ! answers; then
  echo "build.sh: $out/crio does not answer version ${version#v}:" >&2
  "$out/crio" --version >&2 || true
  exit 1
fi
echo "$out"
