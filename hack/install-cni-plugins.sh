#!/usr/bin/env bash
# Install the standard CNI plugins aurae-cri uses (bridge, host-local,
# loopback, portmap) into DIR (default /opt/cni/bin), and Debian's iptables,
# which portmap and the bridge plugin's ipMasq call. Idempotent: does nothing
# when every plugin and iptables are already there.
#
#   hack/install-cni-plugins.sh [DIR]
#
# CNI_PLUGINS_VERSION overrides the pinned release of
# github.com/containernetworking/plugins.
set -euo pipefail

DIR=${1:-/opt/cni/bin}
VERSION=${CNI_PLUGINS_VERSION:-v1.9.1}
GO=${GO:-go}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

MOD=github.com/containernetworking/plugins/plugins
declare -A PKG=(
	[bridge]=$MOD/main/bridge
	[host-local]=$MOD/ipam/host-local
	[loopback]=$MOD/main/loopback
	[portmap]=$MOD/meta/portmap
)

missing=()
for p in bridge host-local loopback portmap; do
	[ -x "$DIR/$p" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "cni plugins: bridge host-local loopback portmap already in $DIR"
else
	pkgs=()
	for p in "${missing[@]}"; do
		pkgs+=("${PKG[$p]}@$VERSION")
	done
	echo "cni plugins: installing ${missing[*]} ($VERSION) into $DIR"
	mkdir -p "$DIR" 2>/dev/null || $SUDO mkdir -p "$DIR"
	# `bridge --version` then names the release, as upstream's builds do.
	ldflags="-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$VERSION"
	if [ -w "$DIR" ]; then
		GOBIN=$DIR CGO_ENABLED=0 "$GO" install -ldflags "$ldflags" "${pkgs[@]}"
	else
		$SUDO env "PATH=$PATH" "GOBIN=$DIR" CGO_ENABLED=0 "$GO" install -ldflags "$ldflags" "${pkgs[@]}"
	fi
fi

if command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ]; then
	echo "iptables: already installed"
else
	echo "iptables: installing the Debian package"
	$SUDO apt-get update
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables
fi
