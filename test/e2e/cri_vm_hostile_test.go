package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIVMHostileGuest: root in a privileged container of a VM pod (a
// container escape inside the VM, as Kata assumes one) gains nothing on
// the host through the pod's share:
//   - a set-user-ID or set-group-ID file, a device node, or a write into a
//     read-only volume is refused, in the rootfs as in a volume, and
//     nothing of the kind appears on the host;
//   - reaching the share through the guest's init (the pod is in the
//     guest's pid namespace) and swapping every mount target below it
//     for a symlink to a host dir, in a loop while the host starts
//     containers with volumes, never puts a mount on that host dir (the
//     attacker is checked to see the share's root and the targets in it,
//     so that the attack is real);
//   - no file the guest writes appears in the kubelet's log directory:
//     the log dir is not shared, and what is there is the host writer's
//     CRI log files only.
func TestCRIVMHostileGuest(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:vm-hostile", testimage.Options{})

	victim := t.TempDir() // what the guest aims its symlinks at
	if err := os.WriteFile(filepath.Join(victim, "marker"), []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	rw, ro := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "file"), []byte("ro"), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := c.podConfig(t, "hostile")
	// Privileged and in the guest's pid namespace: the attacker reaches
	// the guest's own mounts through its init (/proc/1/root), as root in
	// the guest would.
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true,
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE}}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(ctx, podID)
		_ = c.Runtime.RemovePodSandbox(ctx, podID)
	})
	checkVMProcesses(t, podID)
	mounts := []*runtimeapi.Mount{{ContainerPath: "/vol", HostPath: rw}, {ContainerPath: "/ro", HostPath: ro, Readonly: true}}

	// The attacker: the share as the guest mounted it (what it sees noted
	// in /tmp/seen), a file written everywhere it can, and every target
	// below a container's dir that is not there yet (rootfs, m<i> for
	// the mount sources, log where the log dir used to be) made a
	// symlink to the victim dir, forever; each planted one noted in
	// /tmp/planted. Not a mount of its own of the virtiofs tag: with
	// announce_submounts the guest kernel hands a new mount the
	// superblock of the last submount it crossed (a volume's), not the
	// share's root, and the attack would find no target.
	attack := fmt.Sprintf(`S=/proc/1/root/run/aurae/shared
[ -d $S/c ] || exit 17
{ echo "root:"; ls -a $S; for d in $S/c/*; do echo "$d:"; ls -a "$d"; done; } > /tmp/seen 2>&1
for d in $S $S/c $S/c/* $S/c/*/*; do echo pwned > "$d/pwned.log" 2>/dev/null; done
: > /tmp/planted
while :; do
  for d in $S/c/*; do
    [ -d "$d" ] && [ ! -L "$d" ] || continue
    for n in rootfs m0 m1 m2 log; do
      [ -e "$d/$n" ] || [ -L "$d/$n" ] || { ln -s %s "$d/$n" 2>/dev/null && echo "$d/$n" >> /tmp/planted; }
    done
  done
done`, victim)
	cfg := containerConfig("attacker", image, "sh", "-c", attack)
	cfg.Mounts = mounts
	cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
	attacker := runContainer(t, c, podID, pod, cfg)
	waitContainerState(t, c, attacker, runtimeapi.ContainerState_CONTAINER_RUNNING)
	// The attacker sees the share's root: its own container's dir with
	// the targets the host mounted there (rootfs, m0, m1), and plants
	// symlinks.
	var seen string
	for i := 0; ; i++ {
		out, _, err := c.Runtime.ExecSync(ctx, attacker, []string{"sh", "-c", "cat /tmp/seen && echo planted $(wc -l < /tmp/planted)"}, 60*time.Second)
		seen = string(out)
		if err == nil && strings.Contains(seen, "/shared/c/"+attacker[:16]+":") && !strings.Contains(seen, "planted 0") {
			break
		}
		if i == 100 {
			t.Fatalf("the attacker does not see the share's root and its targets (the attack would prove nothing): %v\n%s", err, seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
	own := seen[strings.Index(seen, "/shared/c/"+attacker[:16]+":"):]
	for _, n := range []string{"rootfs", "m0", "m1"} {
		if !strings.Contains(own, "\n"+n+"\n") {
			t.Fatalf("the attacker does not see the target %s of its own container:\n%s", n, seen)
		}
	}

	probe := `cd /vol
touch s; if chmod 4755 s; then echo vol-setuid-made; fi
touch g; if chmod 2755 g; then echo vol-setgid-made; fi
if mknod null c 1 3; then echo vol-chardev-made; fi
if mknod loop b 7 0; then echo vol-blockdev-made; fi
if echo x > /ro/new; then echo ro-written; fi
if echo x >> /ro/file; then echo ro-appended; fi
cp /bin/busybox /bb-setuid; if chmod u+s /bb-setuid; then echo rootfs-setuid-made; fi
if mknod /dev-in-rootfs c 1 3; then echo rootfs-chardev-made; fi
chmod 0755 s && echo done`
	out, stderr, err := c.Runtime.ExecSync(ctx, attacker, []string{"sh", "-c", probe}, 60*time.Second)
	if err != nil {
		t.Fatalf("probe: %v (%s)", err, stderr)
	}
	if got := strings.TrimSpace(string(out)); got != "done" {
		t.Errorf("the guest made privileged files or wrote a read-only volume:\n%s\nstderr: %s", got, stderr)
	}

	// Under TCG the guest's runtime (conmon here) runs without address
	// space randomization, so that QEMU reuses its translated code
	// (hypervisor.TCGKernelArg); the container's own processes, this
	// exec's included, have Linux's default personality (ASLR).
	out, _, err = c.Runtime.ExecSync(ctx, attacker, []string{"sh", "-c",
		`cat /proc/self/personality; for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = conmon ] && cat $d/personality; done; true`}, 60*time.Second)
	if err != nil {
		t.Fatalf("personalities: %v", err)
	}
	lines := strings.Fields(string(out))
	want := "00000000"
	if qemuTCG(t, podID) {
		want = "00040000" // ADDR_NO_RANDOMIZE
	}
	if len(lines) < 2 || lines[0] != "00000000" || slices.ContainsFunc(lines[1:], func(l string) bool { return l != want }) {
		t.Errorf("personalities: the exec's then the guest's conmons' %q, want 00000000 then %s", lines, want)
	}

	// The host starts containers with volumes while the attacker swaps
	// their targets: each is made or refused, never mounted on the victim.
	made, refused := 0, 0
	for i := range 6 {
		cfg := containerConfig(fmt.Sprintf("victim%d", i), image, "sleep", "300")
		cfg.Mounts = mounts
		id, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod)
		if err == nil {
			err = c.Runtime.StartContainer(ctx, id)
		}
		if err != nil {
			refused++
			t.Logf("container %d refused under the attack: %v", i, err)
			continue
		}
		made++
	}
	planted, _, _ := c.Runtime.ExecSync(ctx, attacker, []string{"cat", "/tmp/planted"}, 60*time.Second)
	t.Logf("under the symlink attack: %d containers made, %d refused; symlinks planted:\n%s", made, refused, planted)
	if st, err := c.Runtime.ContainerStatus(ctx, attacker, false); err != nil || st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("the attacker stopped (exit 17: it found no share): %v %v", st.GetStatus(), err)
	}

	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == victim || strings.HasPrefix(f[4], victim+"/")) {
			t.Errorf("a mount on the host dir the guest aimed at: %s", l)
		}
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 1 {
		t.Errorf("the host dir the guest aimed at changed: %v", ents)
	}
	// Nothing privileged on the host, in the volume or in any rootfs.
	for _, n := range []string{"null", "loop"} {
		if _, err := os.Lstat(filepath.Join(rw, n)); err == nil {
			t.Errorf("device node %s made in the host's volume", n)
		}
	}
	if _, err := os.Lstat(filepath.Join(ro, "new")); err == nil {
		t.Error("a file was written into the read-only volume")
	}
	if b, _ := os.ReadFile(filepath.Join(ro, "file")); string(b) != "ro" {
		t.Errorf("the read-only volume's file changed: %q", b)
	}
	checkLogDir(t, pod.GetLogDirectory(), 7)
	checked := 0
	_ = filepath.Walk(c.StateDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil {
			return nil
		}
		if strings.HasSuffix(p, "/bb-setuid") || strings.HasSuffix(p, "/dev-in-rootfs") {
			checked++
		}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR || st.Mode&unix.S_IFMT == unix.S_IFBLK {
			t.Errorf("device node on the host: %s", p)
		}
		if strings.HasSuffix(p, "/bb-setuid") && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			t.Errorf("set-user-ID file on the host: %s (mode %o)", p, st.Mode)
		}
		return nil
	})
	if checked == 0 {
		t.Error("the probe's rootfs files were not found on the host: the test looks in the wrong place")
	}
	for _, n := range []string{"s", "g"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(rw, n), &st); err != nil || st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			t.Errorf("volume file %s on the host: mode %o, %v", n, st.Mode, err)
		}
	}

	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("remove: %v", err)
	}
	mi, _ = os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), filepath.Join(c.StateDir, "vmpods")) {
		t.Errorf("mounts left under %s", filepath.Join(c.StateDir, "vmpods"))
	}
}

// checkVMProcesses: the pod's QEMU runs as a user of its own (not root)
// in the pod's cgroup; its virtiofsd is in the pod's cgroup too, without
// CAP_MKNOD, CAP_FSETID and CAP_SETFCAP, under a seccomp filter.
// qemuTCG says whether the VM pod's QEMU runs under TCG.
func qemuTCG(t *testing.T, podID string) bool {
	t.Helper()
	pids := qemuPids("aurae-vm-pod-" + podID[:16])
	if len(pids) != 1 {
		t.Fatalf("qemu of the vm pod: pids %v", pids)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), "\x00tcg")
}

func checkVMProcesses(t *testing.T, podID string) {
	t.Helper()
	pids := qemuPids("aurae-vm-pod-" + podID[:16])
	if len(pids) != 1 {
		t.Fatalf("qemu of the vm pod: pids %v", pids)
	}
	st := procStatus(t, pids[0])
	if uid := strings.Fields(st["Uid"]); len(uid) != 4 || slices.Contains(uid, "0") {
		t.Errorf("qemu runs as uids %v, want a user of its own", uid)
	}
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pids[0])); !strings.Contains(string(cg), podID) {
		t.Errorf("qemu is not in the pod's cgroup:\n%s", cg)
	}
	var fsd []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), "virtiofsd") && strings.Contains(string(b), "pod-"+podID[:16]) {
			fsd = append(fsd, pid)
		}
	}
	// virtiofsd's namespace sandbox forks: the parent only waits for the
	// child, which serves the guest.
	if len(fsd) == 0 || len(fsd) > 2 {
		t.Fatalf("virtiofsd of the vm pod: pids %v", fsd)
	}
	serving := 0
	for _, pid := range fsd {
		st := procStatus(t, pid)
		if st["Seccomp"] != "2" {
			t.Errorf("virtiofsd %d runs without a seccomp filter (Seccomp: %s)", pid, st["Seccomp"])
		}
		if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); !strings.Contains(string(cg), podID) {
			t.Errorf("virtiofsd %d is not in the pod's cgroup:\n%s", pid, cg)
		}
		if len(fsd) == 1 || slices.Contains(fsd, atoi(st["PPid"])) {
			serving = pid
			var capEff uint64
			if _, err := fmt.Sscanf(st["CapEff"], "%x", &capEff); err != nil {
				t.Fatalf("virtiofsd CapEff %q: %v", st["CapEff"], err)
			}
			for name, bit := range map[string]uint{"CAP_MKNOD": 27, "CAP_FSETID": 4, "CAP_SETFCAP": 31} {
				if capEff&(1<<bit) != 0 {
					t.Errorf("virtiofsd %d has %s (CapEff %s)", pid, name, st["CapEff"])
				}
			}
		}
	}
	if serving == 0 {
		t.Errorf("no serving virtiofsd among %v", fsd)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// checkLogDir: the kubelet's log dir of a VM pod holds only what the host
// writer made: directories and regular files, each file a container's log
// (at most n: the attacker and the six victims) of whole CRI lines,
// nothing the guest wrote (pwned.log, a symlink, a device).
func checkLogDir(t *testing.T, dir string, n int) {
	t.Helper()
	files := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return nil
		case !fi.Mode().IsRegular():
			t.Errorf("the log dir holds %s, mode %v: not the host writer's", p, fi.Mode())
			return nil
		}
		files++
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		// (The attacker's own error messages name pwned.log: as CRI lines
		// of its log, through the host writer.)
		if !strings.HasSuffix(p, ".log") || strings.Contains(filepath.Base(p), "pwned") {
			t.Errorf("the log dir holds %s (%.100q): not the host writer's", p, b)
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if l != "" && !criLogLine.MatchString(l) {
				t.Errorf("%s: not a CRI line: %.100q", p, l)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("walk the log dir: %v", err)
	}
	if files == 0 || files > n {
		t.Errorf("the log dir %s holds %d files, want 1 to %d", dir, files, n)
	}
}
