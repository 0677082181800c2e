#!/usr/bin/env bash
# Builds the pinned CRIU from Debian trixie's source package and installs it
# at a fixed path, which auraed hands to runc for checkpoint and restore.
# Debian 12's criu 3.17.1 cannot dump on current kernels ("vdso: Unexpected
# rt vDSO area bounds"); 4.1.1 can.
#
#   hack/criu/build.sh VERSION [DEST]   # e.g. 4.1.1 /opt/aurae/bin/criu
#
# Nothing is built when DEST exists and answers --version with VERSION.
# The archive is taken from the apt mirror this machine already uses (read
# from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list): the
# signed InRelease of trixie is checked with gpgv against Debian's archive
# keyring, Sources.xz against the InRelease's SHA256, the orig tarball
# against the Sources entry's SHA256. Concurrent callers are serialized with
# flock; the binary is moved into place only once it is complete.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/../lib/cached-build.sh"
source "$here/../lib/debian-source.sh"

version="${1:?usage: build.sh VERSION [DEST]}"
dest="${2:-/opt/aurae/bin/criu}"
suite=trixie
build_deps=(libbsd-dev libcap-dev libnet1-dev libnl-3-dev libprotobuf-c-dev protobuf-c-compiler
  libnftables-dev uuid-dev pkgconf python3-protobuf gcc make xz-utils curl gpgv debian-archive-keyring)

answers() {
  local out
  [[ -x "$dest" ]] && out="$("$dest" --version 2>/dev/null)" && [[ "$out" == *"Version: $version"* ]]
}
show() { "$dest" --version; }

build() {
  local bin="$1" file
  apt_install_missing "${build_deps[@]}"
  cd "$(dirname "$bin")"
  file="$(debian_orig_tarball criu "$version" "$suite")"
  echo "build.sh: building criu $version into $dest" >&2
  tar -xf "$file"
  cd "criu-$version"
  make -s -j"$(nproc)" criu >build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
  install -m 0755 criu/criu "$bin"
}

cached_build "$dest" answers build show
echo "build.sh: $dest is criu $version" >&2
