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
source "$(dirname "${BASH_SOURCE[0]}")/../lib/cached-build.sh"

version="${1:?usage: build.sh VERSION [DEST]}"
dest="${2:-/opt/aurae/bin/criu}"
suite=trixie
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
build_deps=(libbsd-dev libcap-dev libnet1-dev libnl-3-dev libprotobuf-c-dev protobuf-c-compiler
  libnftables-dev uuid-dev pkgconf python3-protobuf gcc make xz-utils curl gpgv debian-archive-keyring)

answers() {
  local out
  [[ -x "$dest" ]] && out="$("$dest" --version 2>/dev/null)" && [[ "$out" == *"Version: $version"* ]]
}

# The first Debian archive URI this machine's apt is configured with (not
# the security archive, which has no trixie source of criu).
mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    while read -r uri; do
      [[ "$uri" == *security* ]] || { echo "${uri%/}"; return 0; }
    done < <(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f")
  done
  if [[ -f /etc/apt/sources.list ]]; then
    while read -r uri; do
      [[ "$uri" == *security* ]] || { echo "${uri%/}"; return 0; }
    done < <(awk '$1 == "deb" || $1 == "deb-src" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' /etc/apt/sources.list)
  fi
  return 1
}
show() { "$dest" --version; }

fetch() { curl -fsSL --retry 3 --max-time 600 -o "$2" "$1"; }

build() {
  local bin="$1" p base missing=() want_sources dir file sha
  for p in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  base="$(mirror)" || { echo "build.sh: no Debian archive URI in the apt sources" >&2; exit 1; }
  cd "$(dirname "$bin")"

  fetch "$base/dists/$suite/InRelease" InRelease
  gpgv --keyring "$keyring" --output Release InRelease 2>/dev/null || {
    echo "build.sh: $suite InRelease does not verify against $keyring" >&2
    exit 1
  }
  # The SHA256 section's line for main/source/Sources.xz: " <sha256> <size> <path>".
  want_sources="$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == "main/source/Sources.xz" { print $1 }' Release)"
  [[ -n "$want_sources" ]] || { echo "build.sh: no main/source/Sources.xz in the $suite Release" >&2; exit 1; }
  fetch "$base/dists/$suite/main/source/Sources.xz" Sources.xz
  echo "$want_sources  Sources.xz" | sha256sum -c --quiet - || { echo "build.sh: Sources.xz checksum mismatch" >&2; exit 1; }

  # criu's stanza: its Directory and the orig tarball line of Checksums-Sha256.
  xz -dc Sources.xz >Sources
  awk -v ver="$version" '
    /^Package: / { pkg = $2; dir = ""; vers = ""; sums = 0 }
    pkg == "criu" && /^Version: / { vers = $2 }
    pkg == "criu" && /^Directory: / { dir = $2 }
    /^Checksums-Sha256:/ { sums = (pkg == "criu"); next }
    /^[^ ]/ { sums = 0 }
    sums && $3 ~ ("^criu_" ver "\\.orig\\.tar\\.") { sha = $1; file = $3 }
    /^$/ && pkg == "criu" && sha != "" && dir != "" { print dir, file, sha; exit }
  ' Sources >criu.entry
  read -r dir file sha < criu.entry || true
  [[ -n "${sha:-}" ]] || { echo "build.sh: no criu $version orig tarball in $suite's Sources" >&2; exit 1; }
  [[ "$file" =~ ^criu_[0-9.]+\.orig\.tar\.(xz|gz|bz2)$ && "$dir" =~ ^pool/main/[a-z0-9/+.-]+$ ]] || {
    echo "build.sh: unexpected Sources entry: $dir $file" >&2
    exit 1
  }
  fetch "$base/$dir/$file" "$file"
  echo "$sha  $file" | sha256sum -c --quiet - || { echo "build.sh: $file checksum mismatch" >&2; exit 1; }

  echo "build.sh: building criu $version into $dest" >&2
  tar -xf "$file"
  cd "criu-$version"
  make -s -j"$(nproc)" criu >build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
  install -m 0755 criu/criu "$bin"
}

cached_build "$dest" answers build show
echo "build.sh: $dest is criu $version" >&2
