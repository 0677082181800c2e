#!/bin/bash
# Runs the tests whose code paths differ on cgroup v2 inside the cgroup v2
# test VM (hack/vm-cg2/build.sh): systemd as PID 1, cgroup2 only
# (systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all), QEMU with KVM where
# it works, TCG otherwise.
#
# Usage: hack/vm-cg2/run.sh [IMAGEDIR]   (default /var/lib/aurae/vm-cg2; root)
#
# On the host: builds auraed, aurae-cri, aer and the test binaries (go test -c),
# shares them with the pinned runc and conmon and the CNI plugins into the guest over 9p,
# boots it, and reads back the guest's go test output (out/guest.log, turned
# into go test -json in RESULTS_DIR) and status (out/rc). Fails when a test
# fails or skips, when the guest did not finish within CG2_TIMEOUT seconds, or
# when the guest is not a cgroup v2 only systemd host. The VM, its share and
# the temp dir are removed whatever happens.
#
# Env: CG2_E2E_RUN / CG2_CELLS_RUN (the -test.run of each binary),
#      CG2_E2E_SYSTEMD_RUN (the e2e tests run again with the systemd cgroup
#      driver; empty: none), CG2_E2E_SYSTEMD_SKIP (its -test.skip),
#      CG2_TIMEOUT (default 3000 s), CG2_MEMORY (MiB, default 3072),
#      CG2_CPUS (default 2), CG2_ACCEL (kvm, tcg or auto: KVM when a probe
#      boot works), RESULTS_DIR (default _output/cgroup2).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
IMG=${1:-/var/lib/aurae/vm-cg2}
GO=${GO:-go}
RUNC=${RUNC:-/opt/aurae/bin/runc}
CONMON=${CONMON:-/opt/aurae/bin/conmon}
CNI_DIR=${CNI_DIR:-/opt/cni/bin}
TIMEOUT=${CG2_TIMEOUT:-3000}
MEMORY=${CG2_MEMORY:-3072}
CPUS=${CG2_CPUS:-2}
RESULTS=${RESULTS_DIR:-$REPO/_output/cgroup2}
# What differs on cgroup v2: cell limits in the v2 files, the OOM kill of a
# cell, cells kept across kill -9; the CRI lifecycle with stats, OOMKilled,
# UpdateContainerResources (memory.max), kill -9 of both daemons; os.OSService
# Stats of cells' executables (cpu.stat, memory.current); all with the
# cgroupfs driver (AURAE_E2E_CGROUP_DRIVER=cgroupfs).
E2E_RUN=${CG2_E2E_RUN:-'^(TestCellLimitsReadBack|TestMemoryLimitKillsOnOOM|TestRestartKeepsCells|TestCRILifecycle|TestCRIUpdateResourcesAndReopenLog|TestCRIRestartLosesNothing|TestCRIContainerFeatures|TestOSStatsCellExecutables)$/^(memory_limit_kills_with_OOMKilled)?$'}
# The same CRI tests with the systemd driver (pods as transient slices,
# containers as runc's scopes), and the driver's own test (the kubelet's
# pod slice honoured, unit properties, kill -9 with units); empty skips the
# pass.
# TestKubeletSystemdDriver: the pinned kubelet (hack/kubelet, built on the
# host and shared) with cgroupDriver: systemd and cgroupsPerQOS.
E2E_SYSTEMD_RUN=${CG2_E2E_SYSTEMD_RUN-'^(TestCRILifecycle|TestCRIUpdateResourcesAndReopenLog|TestCRIRestartLosesNothing|TestCRIContainerFeatures|TestCRISystemdDriver|TestKubeletSystemdDriver)$/^(memory_limit_kills_with_OOMKilled)?$'}
CELLS_RUN=${CG2_CELLS_RUN:-.}
# go test -timeout of the e2e binary in the guest (a timeout dumps the goroutines).
TEST_TIMEOUT=${CG2_TEST_TIMEOUT:-25m}

log() { printf 'cgroup2: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for c in qemu-system-x86_64 "$GO"; do
	command -v "$c" >/dev/null || die "$c missing: run make vm-cg2-deps"
done
for f in vmlinuz initrd.img rootfs.img; do
	[ -f "$IMG/$f" ] || die "$IMG/$f missing: run make vm-cg2-image"
done
[ -x "$RUNC" ] || die "$RUNC missing: run make runc"
[ -x "$CONMON" ] || die "$CONMON missing: run make conmon"
[ -x "$CNI_DIR/bridge" ] || die "$CNI_DIR/bridge missing: run make cni"

work=$(mktemp -d /tmp/aurae-cg2-XXXXXX)
qemu_pid=""
cleanup() {
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
share=$work/share
mkdir -p "$share/bin" "$share/cni" "$share/src/e2e" "$share/src/cells" "$share/out"

t0=$SECONDS
log "building the binaries and test binaries"
ldflags="-X github.com/aurae-runtime/aurae-cri/pkg/version.Version=e2e-test"
(
	cd "$REPO"
	for cmd in auraed aurae-holder aurae-cri aer; do
		"$GO" build -ldflags "$ldflags" -o "$share/bin/$cmd" "./cmd/$cmd"
	done
	"$GO" test -c -o "$share/bin/e2e.test" ./test/e2e
	"$GO" test -c -o "$share/bin/cells.test" ./pkg/aurae/cells
)
cp -r "$REPO/pkg/aurae/cells/testdata" "$share/src/cells/"
install -m 0755 "$RUNC" "$share/bin/runc"
install -m 0755 "$CONMON" "$share/bin/conmon"
if [[ "$E2E_SYSTEMD_RUN" == *Kubelet* ]]; then
	kubelet=$("$REPO/hack/kubelet/build.sh")
	install -m 0755 "$kubelet" "$share/bin/kubelet"
	log "kubelet: $("$kubelet" --version)"
fi
cp "$CNI_DIR"/* "$share/cni/"
build_s=$((SECONDS - t0))

# The guest's run: the tools where the tests expect them, then each test
# binary with -test.v=test2json (the host turns it into go test -json).
cat >"$share/run.sh" <<EOF
set -u
s=/mnt/aurae
install -D -m 0755 \$s/bin/runc /opt/aurae/bin/runc
install -D -m 0755 \$s/bin/conmon /opt/aurae/bin/conmon
mkdir -p /opt/cni/bin && cp \$s/cni/* /opt/cni/bin/
export CI=true AURAE_E2E_BIN_DIR=\$s/bin AURAE_E2E_START_TIMEOUT=3m PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
rc=0
echo "=== binary cells.test"
(cd \$s/src/cells && \$s/bin/cells.test -test.v=test2json -test.count=1 -test.timeout=10m -test.run '$CELLS_RUN') || rc=1
echo "=== binary e2e.test (cgroup driver cgroupfs)"
(cd \$s/src/e2e && AURAE_E2E_CGROUP_DRIVER=cgroupfs \$s/bin/e2e.test -test.v=test2json -test.count=1 -test.timeout=$TEST_TIMEOUT -test.run '$E2E_RUN') || rc=1
if [ -n '$E2E_SYSTEMD_RUN' ]; then
	echo "=== binary e2e.test (cgroup driver systemd)"
	(cd \$s/src/e2e && AURAE_E2E_CGROUP_DRIVER=systemd AURAE_KUBELET_E2E=1 AURAE_KUBELET_BINARY=\$s/bin/kubelet \$s/bin/e2e.test -test.v=test2json -test.count=1 -test.timeout=$TEST_TIMEOUT -test.run '$E2E_SYSTEMD_RUN' -test.skip '${CG2_E2E_SYSTEMD_SKIP:-}') || rc=1
fi
exit \$rc
EOF

# kvm_works boots the kernel under KVM until it panics for want of a root
# file system: /dev/kvm devices that open but fail later (nested ones: a
# failed MSR write, a hang) mean TCG.
kvm_works() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
	# A subshell that does not exec QEMU (the "; true"): its report of
	# QEMU aborting goes to /dev/null too.
	(timeout 60 qemu-system-x86_64 -M q35 -accel kvm -cpu max -m 256 -smp 1 \
		-nographic -nodefaults -no-reboot -serial "file:$work/kvm-probe.log" \
		-kernel "$IMG/vmlinuz" -append "console=ttyS0 panic=-1 root=/dev/aurae-kvm-probe" \
		</dev/null; true) >/dev/null 2>&1
	grep -q 'Kernel panic' "$work/kvm-probe.log" 2>/dev/null
}
case "${CG2_ACCEL:-auto}" in
kvm) accel="-accel kvm" ;;
tcg) accel="-accel tcg,thread=multi,tb-size=256" ;;
auto) if kvm_works; then accel="-accel kvm"; else accel="-accel tcg,thread=multi,tb-size=256"; fi ;;
*) die "CG2_ACCEL=$CG2_ACCEL: want kvm, tcg or auto" ;;
esac
log "booting the guest ($(cat "$IMG/kernel.release" 2>/dev/null), ${MEMORY} MiB, $CPUS cpus, $accel)"
t1=$SECONDS
# shellcheck disable=SC2086
qemu-system-x86_64 -M q35 $accel -cpu max -smp "$CPUS" -m "$MEMORY" \
	-nographic -nodefaults -no-reboot \
	-serial "file:$work/console.log" \
	-kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
	-append "console=ttyS0 root=/dev/vda rw panic=-1 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all aurae.cg2test systemd.show_status=0" \
	-drive "file=$IMG/rootfs.img,format=raw,if=virtio,snapshot=on" \
	-virtfs "local,path=$share,mount_tag=aurae,security_model=none,id=aurae" \
	-device virtio-rng-pci &
qemu_pid=$!
deadline=$((SECONDS + TIMEOUT))
while kill -0 "$qemu_pid" 2>/dev/null; do
	if [ "$SECONDS" -ge "$deadline" ]; then
		log "the guest did not finish within ${TIMEOUT}s; console tail:"
		tail -40 "$work/console.log" >&2 || true
		exit 1
	fi
	sleep 2
done
wait "$qemu_pid" || log "qemu exited with status $?"
qemu_pid=""
vm_s=$((SECONDS - t1))

mkdir -p "$RESULTS"
if [ ! -f "$share/out/guest.log" ]; then
	log "no output from the guest; console tail:"
	tail -60 "$work/console.log" >&2 || true
	exit 1
fi
cp "$share/out/guest.log" "$RESULTS/guest.log"
cp "$work/console.log" "$RESULTS/console.log"
"$GO" tool test2json -t <"$share/out/guest.log" >"$RESULTS/tests.json" || true
# The readable go test -v output of the json.
tr -d '\026' <"$share/out/guest.log" >"$RESULTS/tests.txt" || true
cat "$RESULTS/tests.txt"
boot=$(grep -m1 -o 'aurae-cg2-test: kernel.*' "$share/out/guest.log" || true)
log "guest: $boot"
log "build ${build_s}s, VM boot + tests + power off ${vm_s}s"
rc=$(cat "$share/out/rc" 2>/dev/null || echo missing)
if [ "$rc" != 0 ]; then
	die "the guest's run failed (status $rc); results in $RESULTS"
fi
if grep -q -- '--- SKIP' "$RESULTS/tests.txt"; then
	die "a test skipped in the cgroup v2 VM (every one must run there): $(grep -- '--- SKIP' "$RESULTS/tests.txt" | tr '\n' ' ')"
fi
npass=$(grep -c -- '--- PASS' "$RESULTS/tests.txt" || true)
[ "$npass" -gt 0 ] || die "no test passed in the guest"
log "all passed ($npass tests and subtests, results in $RESULTS)"
