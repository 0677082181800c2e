package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// vmImageDir is the guest image the VM pods of these tests boot:
// AURAE_E2E_VM_IMAGE_DIR (an image built into a dir of its own, e.g. by
// hack/vm-image/build.sh DIR from a branch that changes the guest), else
// the default of make vm-image and aurae-cri.
var vmImageDir = func() string {
	if d := os.Getenv("AURAE_E2E_VM_IMAGE_DIR"); d != "" {
		return d
	}
	return "/var/lib/aurae/vm"
}()

// vmImageArgs are aurae-cri's flags for a guest image other than its
// default.
func vmImageArgs() []string {
	if vmImageDir == "/var/lib/aurae/vm" {
		return nil
	}
	return []string{"--vm-kernel", filepath.Join(vmImageDir, "vmlinux"), "--vm-initramfs", filepath.Join(vmImageDir, "initramfs.cpio.gz")}
}

// requireVMImage skips when the guest image or QEMU is missing (fails
// under CI=true, where make test built and installed them).
func requireVMImage(t *testing.T) {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("CI") == "true" {
		skip = t.Fatalf
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(vmImageDir, f)); err != nil {
			skip("no guest image (make vm-image): %v", err)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
	}
}

// qemuPids are the pids of QEMUs whose command line mentions s.
func qemuPids(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pssKiB is a process's proportional set size (smaps_rollup), 0 if unknown.
func pssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Pss:"); ok {
			var n int
			_, _ = fmt.Sscanf(strings.TrimSpace(rest), "%d", &n)
			return n
		}
	}
	return 0
}

// TestCRIVMPod runs a pod in a microVM through the CRI (handler aurae-vm):
// its containers see the guest kernel, logs reach the host, ExecSync works,
// a native pod reaches it over the CNI network, and stop + remove leave no
// QEMU, mount or socket behind.
func TestCRIVMPod(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	ctx := t.Context()

	st, err := c.Runtime.Status(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	handlers := map[string]bool{}
	for _, h := range st.GetRuntimeHandlers() {
		handlers[h.GetName()] = true
	}
	if !handlers["aurae-vm"] || !handlers["kata"] {
		t.Fatalf("Status lists handlers %v, want aurae-vm and kata", handlers)
	}
	hostRelease, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	image := c.pushBusybox(t, "e2e/busybox:vm", testimage.Options{})

	// Kata's sizing annotations are refused unless allowed, before any VM
	// boots: nothing is left of the pod.
	greedy := c.podConfig(t, "greedy")
	greedy.Annotations = map[string]string{"io.katacontainers.config.hypervisor.default_memory": "65536"}
	if _, err := c.Runtime.RunPodSandbox(ctx, greedy, "aurae-vm"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a VM pod asking for 64 GiB by annotation: %v, want InvalidArgument", err)
	}
	if pods, err := c.Runtime.ListPodSandbox(ctx, nil); err != nil || len(pods) != 0 {
		t.Fatalf("pods after a refused RunPodSandbox: %v %v", pods, err)
	}

	vmPod := c.podConfig(t, "vmpod")
	t0 := time.Now()
	vmPodID, err := c.Runtime.RunPodSandbox(ctx, vmPod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	runTime := time.Since(t0)
	pst, err := c.Runtime.PodSandboxStatus(ctx, vmPodID, false)
	if err != nil {
		t.Fatal(err)
	}
	vmIP := pst.GetStatus().GetNetwork().GetIp()
	if pst.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || vmIP == "" || pst.GetStatus().GetRuntimeHandler() != "aurae-vm" {
		t.Fatalf("vm pod status %v", pst.GetStatus())
	}
	pids := qemuPids("aurae-vm-pod-" + vmPodID[:16])
	if len(pids) != 1 {
		t.Fatalf("qemu of the vm pod: pids %v", pids)
	}

	cfg := containerConfig("server", image, "sh", "-c", "uname -r; cat /proc/self/personality; exec nc -ll -p 8080 -e echo pong")
	srv := runContainer(t, c, vmPodID, vmPod, cfg)
	cst := waitContainerState(t, c, srv, runtimeapi.ContainerState_CONTAINER_RUNNING)
	ready := time.Since(t0)
	logLines := waitLog(t, cst.GetLogPath(), 2)
	line := logLines[0]
	m := criLogLine.FindStringSubmatch(line)
	if m == nil || m[3] != "stdout" {
		t.Fatalf("log line %q", line)
	}
	guestRelease := strings.TrimSpace(m[5])
	if guestRelease == "" || guestRelease == strings.TrimSpace(string(hostRelease)) {
		t.Fatalf("uname -r in the vm pod is %q, host's is %q", guestRelease, hostRelease)
	}
	out, _, err := c.Runtime.ExecSync(ctx, srv, []string{"uname", "-r"}, 30*time.Second)
	if err != nil || strings.TrimSpace(string(out)) != guestRelease {
		t.Fatalf("exec uname -r: %q %v", out, err)
	}
	// The container's processes and an exec have Linux's default
	// personality (ASLR), whatever the guest's runtime runs with (without
	// ASLR under TCG, hypervisor.TCGKernelArg).
	if m := criLogLine.FindStringSubmatch(logLines[1]); m == nil || strings.TrimSpace(m[5]) != "00000000" {
		t.Errorf("the container's personality: log line %q, want 00000000", logLines[1])
	}
	out, _, err = c.Runtime.ExecSync(ctx, srv, []string{"cat", "/proc/self/personality"}, 30*time.Second)
	if err != nil || strings.TrimSpace(string(out)) != "00000000" {
		t.Errorf("an exec's personality: %q %v, want 00000000", out, err)
	}
	// Exec through the streaming server, with stdin, then on a terminal.
	resp, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{
		ContainerId: srv, Cmd: []string{"sh", "-c", "read x; echo got $x; echo err >&2; exit 3"},
		Stdin: true, Stdout: true, Stderr: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err = stream(ctx, t, resp.GetUrl(), remotecommand.StreamOptions{Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Stderr: &stderr})
	var exit utilexec.CodeExitError
	if !errors.As(err, &exit) || exit.Code != 3 || stdout.String() != "got hello\n" || stderr.String() != "err\n" {
		t.Errorf("exec with stdin: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}
	resp, err = c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: srv, Cmd: []string{"busybox", "tty"}, Tty: true, Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := stream(ctx, t, resp.GetUrl(), remotecommand.StreamOptions{Stdout: &stdout, Tty: true}); err != nil || !strings.HasPrefix(stdout.String(), "/dev/pts/") {
		t.Errorf("exec on a tty: %v, output %q", err, stdout.String())
	}

	// kubectl debug --target: a container in the target's pid namespace,
	// in the guest.
	checkPIDTarget(t, c, vmPodID, vmPod, image, srv, "nc -ll -p 8080")

	// Port-forward reaches a server bound to 127.0.0.1 in the guest (the
	// host side of the pod's network cannot).
	local := runContainer(t, c, vmPodID, vmPod, containerConfig("local", image, "sh", "-c",
		"mkdir -p /www && echo guestpong > /www/index.html && exec busybox httpd -f -p 127.0.0.1:9090 -h /www"))
	var page string
	for i := 0; i < 100 && page != "guestpong"; i++ {
		out, _, _ := c.Runtime.ExecSync(ctx, local, []string{"busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/"}, 10*time.Second)
		page = strings.TrimSpace(string(out))
		time.Sleep(100 * time.Millisecond)
	}
	if page != "guestpong" {
		t.Fatalf("the guest's server on 127.0.0.1:9090 does not answer: %q", page)
	}
	pf, err := c.Runtime.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: vmPodID, Port: []int32{9090}})
	if err != nil {
		t.Fatal(err)
	}
	if got := portForwardRead(t, pf.GetUrl(), 9090, "GET / HTTP/1.0\r\n\r\n"); got != "guestpong" {
		t.Errorf("port-forward to the guest's 127.0.0.1:9090 read %q, want guestpong", got)
	}

	time.Sleep(2 * time.Second) // let the idle VM settle before measuring
	t.Logf("vm pod: RunPodSandbox %v, container running after %v; guest kernel %s; qemu RSS/PSS %d/%d KiB",
		runTime.Round(time.Millisecond), ready.Round(time.Millisecond), guestRelease, rssOf(pids[0]), pssKiB(pids[0]))

	for _, r := range c.Records() {
		if r["msg"] == "vm pod running" || r["msg"] == "vm started" {
			t.Logf("%s: %v", r["msg"], r)
		}
		if m, _ := r["method"].(string); r["msg"] == "gRPC call" && strings.Contains(m, "Container") && !strings.Contains(m, "Status") {
			d, _ := r["duration"].(float64)
			t.Logf("%s %v %s", m, r["component"], time.Duration(d).Round(time.Millisecond))
		}
	}

	// A native pod reaches the VM pod over the pod network.
	native := c.podConfig(t, "client")
	nativeID, err := c.Runtime.RunPodSandbox(ctx, native, "")
	if err != nil {
		t.Fatal(err)
	}
	cli := runContainer(t, c, nativeID, native, containerConfig("client", image, "sleep", "300"))
	waitContainerState(t, c, cli, runtimeapi.ContainerState_CONTAINER_RUNNING)
	var got string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out, _, err := c.Runtime.ExecSync(ctx, cli, []string{"nc", "-w", "5", vmIP, "8080"}, 20*time.Second)
		got = strings.TrimSpace(string(out))
		if err == nil && got == "pong" {
			break
		}
		time.Sleep(time.Second)
	}
	if got != "pong" {
		t.Errorf("nc %s 8080 from a native pod: %q, want pong", vmIP, got)
	}

	// aurae-cri (and its embedded auraed) killed and restarted: the VM and
	// its guest pod are adopted again.
	c.Kill9()
	c.Restart(t)
	waitContainerState(t, c, srv, runtimeapi.ContainerState_CONTAINER_RUNNING)
	out, _, err = c.Runtime.ExecSync(ctx, srv, []string{"uname", "-r"}, 30*time.Second)
	if err != nil || strings.TrimSpace(string(out)) != guestRelease {
		t.Fatalf("exec uname -r after a restart: %q %v", out, err)
	}
	if pst, err := c.Runtime.PodSandboxStatus(ctx, vmPodID, false); err != nil || pst.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("vm pod after a restart: %v %v", pst.GetStatus(), err)
	}

	// Stop and remove leave nothing behind.
	if err := c.Runtime.StopPodSandbox(ctx, vmPodID); err != nil {
		t.Fatalf("stop vm pod: %v", err)
	}
	if pids := qemuPids("aurae-vm-pod-" + vmPodID[:16]); len(pids) != 0 {
		t.Errorf("qemu still runs after StopPodSandbox: %v", pids)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, vmPodID); err != nil {
		t.Fatalf("remove vm pod: %v", err)
	}
	var left []string
	_ = filepath.Walk(c.StateDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && (strings.Contains(p, vmPodID[:16])) {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("files of the vm pod left: %v", left)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(mi, []byte(filepath.Join(c.StateDir, "vmpods"))) {
		t.Errorf("mounts left under %s", filepath.Join(c.StateDir, "vmpods"))
	}
}

func rssOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var n int
			_, _ = fmt.Sscanf(strings.TrimSpace(rest), "%d", &n)
			return n
		}
	}
	return 0
}

// TestCRIVMPodQEMUKilled kills a VM pod's QEMU: its container is seen
// exited, and the pod is still removed without leftovers.
func TestCRIVMPodQEMUKilled(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:vmkill", testimage.Options{})
	pod := c.podConfig(t, "vmkill")
	// The pod's resources size its VM: 256 MiB + 64 MiB, 1 + 1 vcpus.
	pod.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, MemoryLimitInBytes: 64 << 20}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "kata")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	ctr := runContainer(t, c, podID, pod, containerConfig("sleeper", image, "sleep", "3600"))
	waitContainerState(t, c, ctr, runtimeapi.ContainerState_CONTAINER_RUNNING)
	pids := qemuPids("aurae-vm-pod-" + podID[:16])
	if len(pids) != 1 {
		t.Fatalf("qemu of the vm pod: pids %v", pids)
	}
	argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
	// -m 320M, or 320M of RAM plus a slot for the root image's pmem device
	// (-m 320M,slots=1,maxmem=…).
	if !regexp.MustCompile("\x00-m\x00320M(\x00|,slots=1,maxmem=)").Match(argv) || !bytes.Contains(argv, []byte("\x00-smp\x002\x00")) {
		t.Errorf("qemu not sized by the pod's resources: %q", bytes.ReplaceAll(argv, []byte{0}, []byte{' '}))
	}
	// With a root image beside the kernel, the guest boots from it (DAX,
	// shared page cache) and gets no initramfs.
	if _, err := os.Stat(filepath.Join(vmImageDir, "rootfs.img")); err == nil {
		if !bytes.Contains(argv, []byte("\x00virtio-pmem-pci,memdev=rootimg,id=rootpmem\x00")) || bytes.Contains(argv, []byte("\x00-initrd\x00")) {
			t.Errorf("rootfs.img beside the kernel, but qemu does not boot from it: %q", bytes.ReplaceAll(argv, []byte{0}, []byte{' '}))
		}
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitContainerState(t, c, ctr, runtimeapi.ContainerState_CONTAINER_EXITED)
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatalf("remove: %v", err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(mi, []byte(filepath.Join(c.StateDir, "vmpods"))) {
		t.Errorf("mounts left under %s", filepath.Join(c.StateDir, "vmpods"))
	}
	if ents, _ := os.ReadDir(filepath.Join(c.StateDir, "vmpods")); len(ents) != 0 {
		t.Errorf("vm pod dirs left: %v", ents)
	}
}
