#!/usr/bin/env bash
# Builds the pinned runc from the Go module proxy (cgo, libseccomp, build tag
# seccomp, as runc's Makefile does) and installs it at a fixed path, which
# auraed and aurae-cri take by default (--oci-runtime). Debian 12's runc
# 1.1.5 predates idmapped mounts and the 2025 security fixes
# (CVE-2025-31133, CVE-2025-52565, CVE-2025-52881).
#
#   hack/runc/build.sh VERSION [DEST]   # e.g. v1.4.4 /opt/aurae/bin/runc
#
# Nothing is built when DEST exists and answers --version with VERSION.
# Concurrent callers are serialized with flock; the binary is moved into
# place only once it is complete. Needs libseccomp-dev, pkg-config and a C
# compiler (make deps installs them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/cached-build.sh"

version="${1:?usage: build.sh VERSION [DEST]}"
dest="${2:-/opt/aurae/bin/runc}"
want="runc version ${version#v}"

answers() {
  local out
  [[ -x "$dest" ]] && out="$("$dest" --version 2>/dev/null)" && [[ "${out%%$'\n'*}" == "$want" ]]
}

show() { "$dest" --version; }

build() {
  local bin="$1"
  export PATH="/usr/local/go/bin:$PATH"
  export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS="-buildvcs=false"
  pkg-config --exists libseccomp || {
    echo "build.sh: libseccomp not found by pkg-config: apt-get install libseccomp-dev pkg-config" >&2
    exit 1
  }
  # runc's main.go embeds its VERSION file; the Makefile adds the git commit,
  # which a module download has not: the module version stands for it.
  local gobin
  gobin="$(dirname "$bin")/gobin"
  echo "build.sh: building runc $version into $dest" >&2
  GOBIN="$gobin" go install -trimpath -buildmode=pie -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-X main.gitCommit=$version" "github.com/opencontainers/runc@$version"
  chmod 0755 "$gobin/runc"
  mv "$gobin/runc" "$bin"
}

cached_build "$dest" answers build show
echo "build.sh: $dest is runc $version" >&2
