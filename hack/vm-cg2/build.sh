#!/bin/bash
# Builds the cgroup v2 test host: a Debian 12 VM image made from Debian
# packages only, booted by hack/vm-cg2/run.sh under QEMU.
#
#   OUTDIR/vmlinuz       Debian's linux-image-amd64 kernel (bzImage: QEMU -kernel)
#   OUTDIR/initrd.img    its initramfs-tools initrd (virtio and ext4 modules)
#   OUTDIR/rootfs.img    raw ext4 root: systemd as PID 1, containerd, runc,
#                        conmon, iproute2, iptables, busybox-static, dbus
#   OUTDIR/image.hash    the cache key of the three
#
# Usage: hack/vm-cg2/build.sh [OUTDIR]   (default /var/lib/aurae/vm-cg2; root)
#
# The apt sources are the machine's own (/etc/apt/sources.list and
# /etc/apt/sources.list.d/*.list|*.sources, read now): no mirror is named here.
# Cached: rebuilt only when this script, its package list or those sources
# change (OUTDIR/image.hash). Needs mmdebstrap and e2fsprogs (make vm-cg2-deps).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-/var/lib/aurae/vm-cg2}
SUITE=bookworm
# The root disk's size (sparse; the guest's /tmp and the test's state live on it).
ROOT_SIZE=${ROOT_SIZE:-6G}
# systemd as init with dbus for the systemd cgroup driver; the guest unit
# runs the tests from a 9p share (hack/vm-cg2/guest/).
PACKAGES=(
	systemd systemd-sysv dbus udev kmod
	linux-image-amd64 initramfs-tools
	containerd runc conmon
	iproute2 iptables procps busybox-static util-linux mount
)

log() { printf 'vm-cg2: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap's root mode, device nodes)"
for c in mmdebstrap mke2fs sha256sum flock; do
	command -v "$c" >/dev/null || die "$c missing: run make vm-cg2-deps"
done

# The machine's own apt sources, each passed to mmdebstrap as a file.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] && grep -qv '^[[:space:]]*\(#.*\)\?$' "$f" && sources+=("$f")
done
[ "${#sources[@]}" -gt 0 ] || die "no apt sources in /etc/apt/sources.list{,.d/}"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec 9>"$OUT/.build.lock"
flock 9

key=$( {
	sha256sum "$HERE/build.sh" "$HERE"/guest/* | cut -d' ' -f1
	printf '%s\n' "$SUITE" "$ROOT_SIZE" "${PACKAGES[@]}"
	cat "${sources[@]}"
} | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/rootfs.img" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ] &&
	[ "$(cat "$OUT/image.hash" 2>/dev/null)" = "$key" ]; then
	log "image is up to date ($OUT)"
	exit 0
fi

# remove_build deletes the build tree, first unmounting what an interrupted
# mmdebstrap may have left mounted in it (/proc, /sys, /dev of the chroot), and
# never crossing into another file system.
remove_build() {
	local m
	awk -v p="$OUT/build/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r |
		while read -r m; do umount -l "$m" || true; done
	rm -rf --one-file-system "$OUT/build"
}

start=$SECONDS
tree="$OUT/build/rootfs"
remove_build
mkdir -p "$OUT/build"
trap remove_build EXIT
log "mmdebstrap $SUITE (${#PACKAGES[@]} packages) from ${sources[*]}"
# The customize hook runs in the finished tree: the test unit, no containerd
# of its own (the tests start theirs), no timers or gettys that slow a TCG boot.
mmdebstrap --mode=root --variant=minbase --quiet \
	--include="$(IFS=,; echo "${PACKAGES[*]}")" \
	--customize-hook="install -m 0644 '$HERE/guest/aurae-cg2-test.service' \"\$1/etc/systemd/system/\"" \
	--customize-hook="install -m 0755 '$HERE/guest/aurae-cg2-test' \"\$1/usr/local/sbin/\"" \
	--customize-hook='chroot "$1" systemctl enable aurae-cg2-test.service' \
	--customize-hook='chroot "$1" systemctl disable containerd.service' \
	--customize-hook='for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service getty@tty1.service; do ln -sf /dev/null "$1/etc/systemd/system/$u"; done' \
	--customize-hook='echo cg2 >"$1/etc/hostname"; printf "127.0.0.1 localhost cg2\n::1 localhost\n" >"$1/etc/hosts"' \
	--customize-hook='printf "LABEL=root / ext4 rw,noatime 0 1\n" >"$1/etc/fstab"' \
	--customize-hook='passwd -R "$1" -d root' \
	"$SUITE" "$tree" "${sources[@]}"

kver=$(basename "$(ls -d "$tree"/lib/modules/* | tail -1)")
[ -f "$tree/boot/vmlinuz-$kver" ] && [ -f "$tree/boot/initrd.img-$kver" ] ||
	die "no kernel or initrd for $kver under $tree/boot"
cp "$tree/boot/vmlinuz-$kver" "$OUT/vmlinuz.tmp"
cp "$tree/boot/initrd.img-$kver" "$OUT/initrd.img.tmp"
log "making rootfs.img ($ROOT_SIZE ext4) from the tree"
rm -f "$OUT/rootfs.img.tmp"
mke2fs -q -t ext4 -L root -d "$tree" "$OUT/rootfs.img.tmp" "$ROOT_SIZE"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
mv "$OUT/rootfs.img.tmp" "$OUT/rootfs.img"
echo "$kver" >"$OUT/kernel.release"
echo "$key" >"$OUT/image.hash"
echo "$((SECONDS - start))" >"$OUT/build-seconds"
log "built in $((SECONDS - start)) s: kernel $kver, rootfs $(du -h "$OUT/rootfs.img" | cut -f1) used of $ROOT_SIZE"
