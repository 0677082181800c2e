# Fetching a verified upstream tarball from a Debian source package, for the
# hack/*/build.sh scripts that build a pinned tool Debian 12 has too old or
# not at all (criu, conmon). Sourced, not run:
#
#   source "$here/../lib/debian-source.sh"
#   apt_install_missing PKG...
#   file="$(debian_orig_tarball PACKAGE VERSION SUITE...)"
#
# The archive is the apt mirror this machine already uses (read from
# /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; the security
# archive is skipped): no host is named here. Each suite's signed InRelease
# is checked with gpgv against Debian's archive keyring, its
# main/source/Sources.xz against the InRelease's SHA256, the orig tarball
# against the Sources entry's SHA256. A signature or checksum that does not
# verify ends the build.

debian_keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# apt_install_missing PKG... installs the packages not installed yet.
apt_install_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# debian_mirror prints the first Debian archive URI of the apt sources.
debian_mirror() {
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
  echo "build.sh: no Debian archive URI in the apt sources" >&2
  return 1
}

_debian_fetch() { curl -fsSL --retry 3 --max-time 600 -o "$2" "$1"; }

# _debian_entry BASE SUITE PACKAGE VERSION prints "<dir> <file> <sha256>" of
# PACKAGE VERSION's orig tarball (VERSION or VERSION+dsN, as Debian repacks)
# in SUITE's verified Sources, or nothing when SUITE has no such entry.
_debian_entry() {
  local base="$1" suite="$2" pkg="$3" version="$4" want
  _debian_fetch "$base/dists/$suite/InRelease" "InRelease.$suite" || return 0
  gpgv --keyring "$debian_keyring" --output "Release.$suite" "InRelease.$suite" 2>/dev/null || {
    echo "build.sh: $suite InRelease does not verify against $debian_keyring" >&2
    return 1
  }
  # The SHA256 section's line for main/source/Sources.xz: " <sha256> <size> <path>".
  want="$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 } s && $3 == "main/source/Sources.xz" { print $1 }' "Release.$suite")"
  [[ -n "$want" ]] || return 0
  _debian_fetch "$base/dists/$suite/main/source/Sources.xz" "Sources.$suite.xz" || return 0
  echo "$want  Sources.$suite.xz" | sha256sum -c --quiet - || { echo "build.sh: $suite Sources.xz checksum mismatch" >&2; return 1; }
  xz -dc "Sources.$suite.xz" >"Sources.$suite"
  # The package's stanza: its Directory and the orig tarball line of
  # Checksums-Sha256.
  awk -v pkg="$pkg" -v ver="$version" '
    /^Package: / { cur = $2; dir = ""; sha = ""; sums = 0 }
    cur == pkg && /^Directory: / { dir = $2 }
    /^Checksums-Sha256:/ { sums = (cur == pkg); next }
    /^[^ ]/ { sums = 0 }
    sums && $3 ~ ("^" pkg "_" ver "(\\+ds[0-9]+)?\\.orig\\.tar\\.") { sha = $1; file = $3 }
    /^$/ && cur == pkg && sha != "" && dir != "" { print dir, file, sha; exit }
  ' "Sources.$suite"
}

# debian_orig_tarball PACKAGE VERSION SUITE... downloads into the current
# directory the orig tarball of PACKAGE VERSION from the first SUITE whose
# verified Sources lists it and whose mirror serves it, checks it, and
# prints its file name.
debian_orig_tarball() {
  local pkg="$1" version="$2" base suite entry dir f sha
  shift 2
  base="$(debian_mirror)" || return 1
  for suite in "$@"; do
    entry="$(_debian_entry "$base" "$suite" "$pkg" "$version")" || return 1
    dir="" f="" sha=""
    read -r dir f sha <<<"$entry" || true
    [[ -n "${sha:-}" ]] || continue
    [[ "$f" =~ ^${pkg}_[0-9.]+(\+ds[0-9]+)?\.orig\.tar\.(xz|gz|bz2)$ && "$dir" =~ ^pool/main/[a-z0-9/+.-]+$ ]] || {
      echo "build.sh: unexpected Sources entry in $suite: $dir $f" >&2
      return 1
    }
    if _debian_fetch "$base/$dir/$f" "$f"; then
      echo "$sha  $f" | sha256sum -c --quiet - || { echo "build.sh: $f checksum mismatch" >&2; return 1; }
      echo "build.sh: $pkg $version from $suite ($f)" >&2
      echo "$f"
      return 0
    fi
    echo "build.sh: $suite lists $f but the mirror does not serve it; trying the next suite" >&2
  done
  echo "build.sh: no suite of $* has $pkg $version's orig tarball on $base" >&2
  return 1
}
