#!/bin/bash
# Builds the guest image of aurae microVMs from Debian packages:
#
#   OUTDIR/vmlinux              uncompressed x86_64 kernel, PVH-bootable (QEMU -kernel)
#   OUTDIR/initramfs.cpio.gz    /init = static auraed; crun, static conmon, busybox
#                               (LZ4-compressed, legacy frame: the kernel finds
#                               the format by its magic; the name stays)
#   OUTDIR/rootfs.img           the same tree as a read-only ext4 (4 KiB blocks,
#                               a multiple of 2 MiB): where the hypervisor can,
#                               the guest boots from it by virtio-pmem + DAX
#
# Usage: hack/vm-image/build.sh [OUTDIR]   (default /var/lib/aurae/vm; root: mknod)
#
# Cached: the kernel is rebuilt only when kernel.config, the linux-source-6.1
# package version or this recipe's KERNEL_RECIPE changes (OUTDIR/vmlinux.hash);
# the initramfs only when one of its files changes (OUTDIR/initramfs.hash).
# The kernel tree and objects stay under OUTDIR/build for incremental builds.
# Needs: linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio lz4
# busybox-static crun (make vm-deps installs them) and the static conmon of
# `make conmon` (CONMON overrides its path).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-/var/lib/aurae/vm}
GO=${GO:-go}
JOBS=${JOBS:-2}
# Bump when the kernel build steps below change.
KERNEL_RECIPE=1
# Bump when the initramfs layout below changes.
INITRAMFS_RECIPE=3

log() { printf 'vm-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the initramfs needs device nodes made with mknod)"
for c in cpio lz4 mkfs.ext4 xz make gcc flex bison bc ldd busybox crun sha256sum flock; do
	command -v "$c" >/dev/null || die "$c missing: run make vm-deps"
done
[ -x /bin/busybox ] && file_is_static=$(ldd /bin/busybox 2>&1 || true)
case "${file_is_static:-}" in *"not a dynamic"*) ;; *) die "/bin/busybox is not static: install busybox-static (make vm-deps)" ;; esac

mkdir -p "$OUT/build"
OUT=$(cd "$OUT" && pwd)
# One build at a time per OUTDIR (the VmService tests may run make vm-image too).
exec 9>"$OUT/.build.lock"
flock 9

build_kernel() {
	local tarball=/usr/src/linux-source-6.1.tar.xz
	[ -f "$tarball" ] || die "$tarball missing: install linux-source-6.1 (make vm-deps)"
	local srcver key
	srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
	key=$( { echo "recipe $KERNEL_RECIPE"; echo "linux-source-6.1 $srcver"; cat "$HERE/kernel.config"; } | sha256sum | cut -d' ' -f1)
	if [ -f "$OUT/vmlinux" ] && [ "$(cat "$OUT/vmlinux.hash" 2>/dev/null)" = "$key" ]; then
		log "vmlinux is up to date (linux-source-6.1 $srcver)"
		[ -f "$OUT/vmlinux.release" ] || cp "$OUT/build/linux-obj/include/config/kernel.release" "$OUT/vmlinux.release"
		return
	fi
	local src="$OUT/build/linux-src" obj="$OUT/build/linux-obj"
	if [ "$(cat "$src/.aurae-extracted" 2>/dev/null)" != "$srcver" ]; then
		log "extracting linux-source-6.1 $srcver"
		rm -rf "$src" "$obj"
		mkdir -p "$src"
		tar -xJf "$tarball" -C "$src" --strip-components=1
		echo "$srcver" >"$src/.aurae-extracted"
	fi
	mkdir -p "$obj"
	local start=$SECONDS
	log "configuring: tinyconfig + kernel.config"
	make -s -C "$src" O="$obj" ARCH=x86_64 tinyconfig >/dev/null
	(cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m -O "$obj" "$obj/.config" "$HERE/kernel.config" >/dev/null)
	make -s -C "$src" O="$obj" ARCH=x86_64 olddefconfig >/dev/null
	# Kconfig silently drops what lacks a dependency: insist on every line.
	local missing=""
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) grep -qxF -- "$line" "$obj/.config" || missing="$missing $line" ;;
		"# CONFIG_"*" is not set")
			local opt=${line#\# }; opt=${opt%% *}
			if grep -q "^$opt=" "$obj/.config"; then missing="$missing $line"; fi ;;
		esac
	done <"$HERE/kernel.config"
	[ -z "$missing" ] || die "kernel.config options not in the final .config:$missing"
	log "building vmlinux (nice -n 19 make -j$JOBS; about 25 minutes on 2 shared cores)"
	nice -n 19 make -s -C "$src" O="$obj" ARCH=x86_64 -j"$JOBS" vmlinux >"$OUT/build/kernel-build.log" 2>&1 ||
		{ tail -30 "$OUT/build/kernel-build.log" >&2; die "kernel build failed (log: $OUT/build/kernel-build.log)"; }
	cp "$obj/vmlinux" "$OUT/vmlinux.tmp"
	cp "$obj/.config" "$OUT/vmlinux.config"
	mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
	cp "$obj/include/config/kernel.release" "$OUT/vmlinux.release"
	echo "$key" >"$OUT/vmlinux.hash"
	echo "$((SECONDS - start))" >"$OUT/vmlinux.build-seconds"
	log "vmlinux $(cat "$OUT/vmlinux.release") built in $((SECONDS - start)) s"
}

# copy_with_libs BIN DEST_IN_TREE copies a dynamically linked binary and the
# libraries ldd lists (at the same paths, the loader included).
copy_with_libs() {
	local bin=$1 dest=$2 tree=$3
	install -D -m 0755 "$bin" "$tree$dest"
	ldd "$bin" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
		[ -e "$tree$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$tree$lib"
	done
}

build_initramfs() {
	local auraed="$OUT/build/auraed"
	local version
	version=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo dev)
	log "building static auraed (CGO_ENABLED=0, netgo, osusergo)"
	(cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath -tags netgo,osusergo \
		-ldflags "-s -w -X github.com/aurae-runtime/aurae-cri/pkg/version.Version=$version" \
		-o "$auraed.tmp" ./cmd/auraed)
	if ldd "$auraed.tmp" >/dev/null 2>&1; then die "auraed is not static"; fi
	mv "$auraed.tmp" "$auraed"
	# The pod namespace holder, beside /init where auraed looks for it: a
	# start of auraed's own binary costs ~1 s of package initialisation
	# under TCG, this one's next to nothing.
	local holder="$OUT/build/aurae-holder"
	(cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$holder.tmp" ./cmd/aurae-holder)
	if ldd "$holder.tmp" >/dev/null 2>&1; then die "aurae-holder is not static"; fi
	mv "$holder.tmp" "$holder"

	local crun conmon key
	# The guest's OCI runtime is Debian's crun, not the host's pinned runc:
	# runc create + start are three starts of a 15 MB Go binary, which under
	# TCG cost most of a container's start; crun is C. Inside the guest a
	# container escape is assumed by the threat model (the VM is the pod's
	# boundary), so Debian's crun is acceptable there; the host keeps the
	# pinned runc.
	crun=$(readlink -f "$(command -v crun)")
	# The static conmon of `make conmon` (no loader, no libraries: under TCG
	# each dynamic conmon's start relocates a dozen libraries anew, ~40 ms
	# more per container measured with qemu-user); installed where auraed
	# looks for its pinned monitor.
	conmon=${CONMON:-/opt/aurae/bin/conmon}
	[ -x "$conmon" ] || die "$conmon is missing: run make conmon"
	case "$(ldd "$conmon" 2>&1 || true)" in *"=>"*) die "$conmon is not static" ;; esac
	key=$( { echo "recipe $INITRAMFS_RECIPE"; sha256sum "$auraed" "$holder" /bin/busybox "$crun" "$conmon" "$HERE/build.sh" | cut -d' ' -f1; } | sha256sum | cut -d' ' -f1)
	if [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/rootfs.img" ] && [ "$(cat "$OUT/initramfs.hash" 2>/dev/null)" = "$key" ]; then
		log "initramfs.cpio.gz and rootfs.img are up to date"
		return
	fi
	local tree="$OUT/build/initramfs"
	rm -rf "$tree"
	mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,etc,var/lib/aurae,mnt}
	chmod 1777 "$tree/tmp"
	install -m 0755 "$auraed" "$tree/init"
	ln -s ../../init "$tree/usr/bin/auraed"
	install -m 0755 "$holder" "$tree/aurae-holder"
	install -m 0755 /bin/busybox "$tree/bin/busybox"
	local applet
	for applet in $(/bin/busybox --list); do
		[ "$applet" = busybox ] || [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"
	done
	copy_with_libs "$crun" /usr/bin/crun "$tree"
	install -D -m 0755 "$conmon" "$tree/opt/aurae/bin/conmon"
	mknod -m 0600 "$tree/dev/console" c 5 1
	mknod -m 0666 "$tree/dev/null" c 1 3
	printf 'aurae\n' >"$tree/etc/hostname"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$tree/etc/hosts"
	: >"$tree/etc/resolv.conf"
	(cd "$tree" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --null --quiet -o -H newc --reproducible -R 0:0) | lz4 -l -9 -q >"$OUT/initramfs.cpio.gz.tmp"
	mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
	# The root image: the tree plus a quarter and 4 MiB, rounded up to 2 MiB
	# (a virtio-pmem device's alignment); 4 KiB blocks (DAX maps pages); no
	# journal (mounted read-only).
	local kib
	kib=$(du -s --apparent-size --block-size=1K "$tree" | cut -f1)
	kib=$(( (kib + kib / 4 + 4096 + 2047) / 2048 * 2048 ))
	rm -f "$OUT/rootfs.img.tmp"
	mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal -L aurae-root -E root_owner=0:0 -d "$tree" "$OUT/rootfs.img.tmp" "${kib}K"
	mv "$OUT/rootfs.img.tmp" "$OUT/rootfs.img"
	echo "$key" >"$OUT/initramfs.hash"
	log "initramfs.cpio.gz (LZ4): $(du -h "$OUT/initramfs.cpio.gz" | cut -f1), $(du -sh "$tree" | cut -f1) unpacked (auraed $(du -h "$auraed" | cut -f1)); rootfs.img $((kib / 1024)) MiB"
}

# PARTS="initramfs" (or "kernel") builds only that part.
for part in ${PARTS:-kernel initramfs}; do
	case "$part" in
	kernel) build_kernel ;;
	initramfs) build_initramfs ;;
	*) die "unknown part $part" ;;
	esac
done
log "done: $OUT/vmlinux $OUT/initramfs.cpio.gz $OUT/rootfs.img"
