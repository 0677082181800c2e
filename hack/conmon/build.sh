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
# the build stamp. The archive is taken from the apt mirror this machine
# already uses (read from /etc/apt/sources.list.d/*.sources or
# /etc/apt/sources.list): the first of SUITES whose source index has conmon
# VERSION and whose mirror serves its orig tarball. Each suite's signed
# InRelease is checked with gpgv against Debian's archive keyring, Sources.xz
# against the InRelease's SHA256, the orig tarball against the Sources
# entry's SHA256. Concurrent callers are serialized with flock; the binary is
# moved into place only once it is complete.
set -euo pipefail

version="${1:?usage: build.sh VERSION [DEST] [SUITES]}"
dest="${2:-/opt/aurae/bin/conmon}"
read -r -a suites <<<"${3:-sid trixie bookworm}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# What --version prints as its commit: tells this build from any other
# conmon of the same version.
stamp=aurae-static
build_deps=(libglib2.0-dev libpcre2-dev gcc libc6-dev binutils make pkgconf xz-utils curl gpgv debian-archive-keyring)

answers() {
  local out
  [[ -x "$dest" ]] && out="$("$dest" --version 2>/dev/null)" &&
    [[ "$out" == *"conmon version $version"* && "$out" == *"commit: $stamp"* ]]
}

if answers; then
  echo "build.sh: $dest is conmon $version ($stamp)" >&2
  exit 0
fi

mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if answers; then # built by another caller while we waited
  exit 0
fi

missing=()
for p in "${build_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The first Debian archive URI this machine's apt is configured with (not
# the security archive, which has no source of conmon).
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
base="$(mirror)" || { echo "build.sh: no Debian archive URI in the apt sources" >&2; exit 1; }

work="$(mktemp -d "$(dirname "$dest")/.conmon-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
cd "$work"
fetch() { curl -fsSL --retry 3 --max-time 600 -o "$2" "$1"; }

# source_entry SUITE: prints "<dir> <file> <sha256>" of conmon VERSION's
# orig tarball in SUITE's verified Sources, or nothing.
source_entry() {
  local suite="$1" want
  fetch "$base/dists/$suite/InRelease" "InRelease.$suite" || return 0
  gpgv --keyring "$keyring" --output "Release.$suite" "InRelease.$suite" 2>/dev/null || {
    echo "build.sh: $suite InRelease does not verify against $keyring" >&2
    exit 1
  }
  # The SHA256 section's line for main/source/Sources.xz: " <sha256> <size> <path>".
  want="$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == "main/source/Sources.xz" { print $1 }' "Release.$suite")"
  [[ -n "$want" ]] || return 0
  fetch "$base/dists/$suite/main/source/Sources.xz" "Sources.$suite.xz" || return 0
  echo "$want  Sources.$suite.xz" | sha256sum -c --quiet - || { echo "build.sh: $suite Sources.xz checksum mismatch" >&2; exit 1; }
  # conmon's stanza: its Directory and the orig tarball line of
  # Checksums-Sha256 (Debian repacks as VERSION+dsN).
  xz -dc "Sources.$suite.xz" >"Sources.$suite"
  awk -v ver="$version" '
    /^Package: / { pkg = $2; dir = ""; sha = ""; sums = 0 }
    pkg == "conmon" && /^Directory: / { dir = $2 }
    /^Checksums-Sha256:/ { sums = (pkg == "conmon"); next }
    /^[^ ]/ { sums = 0 }
    sums && $3 ~ ("^conmon_" ver "(\\+ds[0-9]+)?\\.orig\\.tar\\.") { sha = $1; file = $3 }
    /^$/ && pkg == "conmon" && sha != "" && dir != "" { print dir, file, sha; exit }
  ' "Sources.$suite"
}

file=""
for suite in "${suites[@]}"; do
  # Not in a subshell: its exit on a bad signature or checksum ends the script.
  source_entry "$suite" >"entry.$suite"
  dir="" f="" sha=""
  read -r dir f sha <"entry.$suite" || true
  [[ -n "${sha:-}" ]] || continue
  [[ "$f" =~ ^conmon_[0-9.]+(\+ds[0-9]+)?\.orig\.tar\.(xz|gz|bz2)$ && "$dir" =~ ^pool/main/[a-z0-9/+.-]+$ ]] || {
    echo "build.sh: unexpected Sources entry in $suite: $dir $f" >&2
    exit 1
  }
  if fetch "$base/$dir/$f" "$f"; then
    echo "$sha  $f" | sha256sum -c --quiet - || { echo "build.sh: $f checksum mismatch" >&2; exit 1; }
    file="$f"
    break
  fi
  echo "build.sh: $suite lists $f but the mirror does not serve it; trying the next suite" >&2
done
[[ -n "$file" ]] || { echo "build.sh: no suite of ${suites[*]} has conmon $version's orig tarball on $base" >&2; exit 1; }

echo "build.sh: building conmon $version ($file, $suite) into $dest" >&2
mkdir src
tar -xf "$file" -C src --strip-components=1
cd src
# conmon's Makefile turns journald and seccomp notify on when pkg-config
# finds libsystemd and libseccomp: this pkg-config says they are absent, and
# asks for the static link flags of the rest.
mkdir -p "$work/pc"
cat >"$work/pc/pkg-config" <<'EOF'
#!/bin/sh
for a in "$@"; do case "$a" in libsystemd|libseccomp) exit 1 ;; esac; done
exec /usr/bin/pkg-config --static "$@"
EOF
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
install -m 0755 bin/conmon "$work/conmon.new"
mv -f "$work/conmon.new" "$dest"
echo "build.sh: built conmon $version in $((SECONDS - start))s" >&2
if ! answers; then
  echo "build.sh: $dest --version does not say 'conmon version $version' and 'commit: $stamp':" >&2
  "$dest" --version >&2 || true
  exit 1
fi
