#!/usr/bin/env bash
# Builds the lean conmon auraed runs as the monitor of every container: the
# pinned conmon release, linked statically (static-pie, so that its code
# keeps ASLR) against glib's static library, without journald (libsystemd
# has no static library; auraed never asks for journald logs) and without
# seccomp notify (auraed never passes --seccomp-notify-socket). A
# dynamically linked conmon carries ~330 KiB of private pages per process
# (the loader's relocations, GOT and .data copies of glib, libsystemd,
# libgcrypt, …); this one ~135 KiB.
#
#   hack/conmon/build.sh VERSION SUM [DEST]   # e.g. 2.2.1 h1:... /opt/aurae/bin/conmon
#
# Nothing is built when DEST exists and answers --version with VERSION and
# the build stamp. The source is the release's tree as the Go module proxy
# serves it (github.com/containers/conmon@vVERSION+incompatible: `go mod
# download` checks it against Go's checksum database) and must hash to SUM
# (its go.sum hash). Debian has 2.1.13 at most, whose cgroup v2 OOM watch
# stops at the first memory.events change that is no OOM (a container near
# its limit) and so misses the OOM kill that follows; 2.2.0 fixed it.
# Concurrent callers are serialized and the binary is moved into place only
# once it is complete: hack/lib/cached-build.sh.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/../lib/cached-build.sh"
# apt_install_missing
source "$here/../lib/debian-source.sh"

version="${1:?usage: build.sh VERSION SUM [DEST]}"
sum="${2:?usage: build.sh VERSION SUM [DEST]}"
dest="${3:-/opt/aurae/bin/conmon}"
GO="${GO:-go}"
# What --version prints as its commit: tells this build from any other
# conmon of the same version.
stamp=aurae-static
build_deps=(libglib2.0-dev libpcre2-dev gcc libc6-dev binutils make pkgconf)

answers() {
  local out
  [[ -x "$dest" ]] && out="$("$dest" --version 2>/dev/null)" &&
    [[ "$out" == *"conmon version $version"* && "$out" == *"commit: $stamp"* ]]
}
show() { "$dest" --version; }

build() {
  local bin="$1" work info dir got cflags ldflags
  apt_install_missing "${build_deps[@]}"
  work="$(dirname "$bin")"
  cd "$work"
  # A module cache of its own, removed with the work dir.
  info="$(GOMODCACHE="$work/mod" GOFLAGS=-mod=mod "$GO" mod download -json "github.com/containers/conmon@v$version+incompatible")" ||
    { echo "build.sh: conmon $version is not on the Go module proxy" >&2; exit 1; }
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
  got="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"$info")"
  if [[ "$got" != "$sum" ]]; then
    echo "build.sh: conmon $version hashes to ${got:-nothing}, want $sum" >&2
    exit 1
  fi
  echo "build.sh: building conmon $version ($sum) into $dest" >&2
  cp -r "$dir" src
  chmod -R u+w src "$work/mod"
  cd src
  # conmon's Makefile turns journald and seccomp notify on when pkg-config
  # finds libsystemd and libseccomp: this pkg-config says they are absent, and
  # asks for the static link flags of the rest.
  mkdir -p "$work/pc"
  printf '%s\n' '#!/bin/sh' \
    'for a in "$@"; do case "$a" in libsystemd|libseccomp) exit 1 ;; esac; done' \
    'exec /usr/bin/pkg-config --static "$@"' >"$work/pc/pkg-config"
  chmod +x "$work/pc/pkg-config"
  # Debian's hardening flags (dpkg-buildflags) plus a static-pie link.
  cflags="-std=c99 -Os -Wall -Wextra -Werror -fPIE -fstack-protector-strong -D_FORTIFY_SOURCE=2 -fstack-clash-protection -fcf-protection"
  ldflags="-static-pie -Wl,-z,relro -Wl,-z,now -s"
  PATH="$work/pc:$PATH" make -j"$(nproc)" bin/conmon CFLAGS="$cflags" LDFLAGS="$ldflags" GIT_COMMIT="$stamp" >build.log 2>&1 ||
    { tail -n 40 build.log >&2; exit 1; }
  # No program interpreter: nothing is loaded at run time (glib's getpwnam,
  # reached only from g_get_home_dir and g_get_user_name, which conmon never
  # calls, is the only NSS user linked in).
  if readelf -l bin/conmon | grep -q 'program interpreter'; then
    echo "build.sh: bin/conmon is not static" >&2
    exit 1
  fi
  install -m 0755 bin/conmon "$bin"
}

cached_build "$dest" answers build show
echo "build.sh: $dest is conmon $version ($stamp)" >&2
