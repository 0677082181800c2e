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

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" { $1 = "" ; $0 = $0 } $1 == "sigs.k8s.io/cri-tools" { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: no 'require sigs.k8s.io/cri-tools vX.Y.Z' line in $here/go.mod" >&2
  exit 1
fi
cache="${AURAE_CACHE_DIR:-/var/cache/aurae-cri}"
out="$cache/cri-tools-$version"

answers() {
  local c t
  [[ -x "$out/crictl" && -x "$out/critest" && -x "$out/ginkgo" ]] || return 1
  c="$("$out/crictl" --version 2>/dev/null)" || return 1
  t="$("$out/critest" -version 2>/dev/null)" || return 1
  [[ "$c" == "crictl version ${version#v}" && "$t" == *"critest version: ${version#v}"* ]]
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
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${version#v}"

tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "build.sh: building crictl, critest and ginkgo (cri-tools $version) into $out" >&2
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$tmp/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
(cd "$here" && go test -c -trimpath -ldflags "$ldflags" -o "$tmp/critest" sigs.k8s.io/cri-tools/cmd/critest)
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$tmp/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
chmod 0755 "$tmp/crictl" "$tmp/critest" "$tmp/ginkgo"
mv -f "$tmp/crictl" "$tmp/critest" "$tmp/ginkgo" "$out/"
echo "build.sh: built crictl and critest $version in $((SECONDS - start))s" >&2
if ! answers; then
  echo "build.sh: $out/crictl or critest does not answer version ${version#v}:" >&2
  "$out/crictl" --version >&2 || true
  "$out/critest" -version >&2 || true
  exit 1
fi
echo "$out"
