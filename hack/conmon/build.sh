#!/usr/bin/env bash
# Builds the lean conmon auraed runs as the monitor of every container: the
# pinned conmon from Debian's source package, linked statically (static-pie,
# so that its code keeps ASLR) against glib's static library, without
# journald (libsystemd has no static library; auraed never asks for journald
# logs) and without seccomp notify (auraed never passes
# --seccomp-notify-socket). A dynamically linked conmon carries ~330 KiB of
# private pages per process (the loader's relocations, GOT and .data copies
# of glib, libsystemd, libgcrypt, …); this one ~135 KiB.
#
#   hack/conmon/build.sh VERSION [DEST] [SUITES]   # e.g. 2.1.13 /opt/aurae/bin/conmon "sid trixie bookworm"
#
# Nothing is built when DEST exists and answers --version with VERSION and
# the build stamp. The source is the orig tarball of the first of SUITES
# whose verified source index has conmon VERSION and whose mirror (this
# machine's apt mirror) serves it: see hack/lib/debian-source.sh. Concurrent
# callers are serialized and the binary is moved into place only once it is
# complete: hack/lib/cached-build.sh.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/../lib/cached-build.sh"
source "$here/../lib/debian-source.sh"

version="${1:?usage: build.sh VERSION [DEST] [SUITES]}"
dest="${2:-/opt/aurae/bin/conmon}"
read -r -a suites <<<"${3:-sid trixie bookworm}"
# What --version prints as its commit: tells this build from any other
# conmon of the same version.
stamp=aurae-static
build_deps=(libglib2.0-dev libpcre2-dev gcc libc6-dev binutils make pkgconf xz-utils curl gpgv debian-archive-keyring)

answers() {
  local out
  [[ -x "$dest" ]] && out="$("$dest" --version 2>/dev/null)" &&
    [[ "$out" == *"conmon version $version"* && "$out" == *"commit: $stamp"* ]]
}
show() { "$dest" --version; }

build() {
  local bin="$1" work file cflags ldflags
  apt_install_missing "${build_deps[@]}"
  work="$(dirname "$bin")"
  cd "$work"
  file="$(debian_orig_tarball conmon "$version" "${suites[@]}")"
  echo "build.sh: building conmon $version ($file) into $dest" >&2
  mkdir src
  tar -xf "$file" -C src --strip-components=1
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
