package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIVMGuestClaimsForeignContainers: while aurae-cri and its auraed are
// down (kill -9) under a running VM pod, the guest makes containers the host
// never asked for — one with an id of its own choosing and one with the id
// of a container of another (native) pod on the node. After the restart
// neither is adopted: the CRI lists exactly what it made, the native
// container's status is still its own, and the claims are logged as ignored.
func TestCRIVMGuestClaimsForeignContainers(t *testing.T) {
	c, image, vmPod, vmPodID := startVMPod(t, "vmtrust")
	ctx := t.Context()
	mine := runContainer(t, c, vmPodID, vmPod, containerConfig("mine", image, "sleep", "3000"))
	waitContainerState(t, c, mine, runtimeapi.ContainerState_CONTAINER_RUNNING)

	nativePod := c.podConfig(t, "neighbour")
	nativePodID, err := c.Runtime.RunPodSandbox(ctx, nativePod, "")
	if err != nil {
		t.Fatal(err)
	}
	neighbour := runContainer(t, c, nativePodID, nativePod, containerConfig("neighbour", image, "sleep", "3000"))
	nst := waitContainerState(t, c, neighbour, runtimeapi.ContainerState_CONTAINER_RUNNING)

	qemu := qemuPids("aurae-vm-pod-" + vmPodID[:16])
	if len(qemu) != 1 {
		t.Fatalf("qemu of the vm pod: pids %v", qemu)
	}
	c.Kill9()

	// The guest's channel is free while the host's daemons are down: what
	// the guest says next is what a hostile guest could say.
	sock := findVMSocket(t, c.StateDir, "pod-"+vmPodID[:16])
	gc, err := client.Dial(ctx, "unix://"+sock)
	if err != nil {
		t.Fatalf("dial the guest at %s: %v", sock, err)
	}
	guest := native.New(gc.Conn)
	rogue := strings.Repeat("e", 64)
	for _, id := range []string{rogue, neighbour} {
		facts, err := guest.PrepareContainer(ctx, vmPodID, controller.ContainerFiles{
			ID: id, Rootfs: "/run/aurae/shared/c/" + mine[:16] + "/rootfs",
		})
		if err != nil {
			t.Fatalf("guest PrepareContainer %s: %v", id, err)
		}
		spec, err := ocispec.Generate(ocispec.Input{
			ID: id, SandboxID: vmPodID, Config: containerConfig("claimed", image, "sleep", "3000"),
			Sandbox: vmPod, Pod: facts, RootFS: fstest.MapFS{},
		})
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := guest.StartContainer(ctx, vmPodID, controller.Container{ID: id, Spec: b}); err != nil {
			t.Fatalf("guest starts container %s: %v", id, err)
		}
	}
	states, err := guest.ListPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	claimed := 0
	for _, ps := range states {
		for _, cs := range ps.Containers {
			if ps.ID == vmPodID && (cs.ID == rogue || cs.ID == neighbour) && cs.State == controller.StateRunning {
				claimed++
			}
		}
	}
	if claimed != 2 {
		t.Fatalf("the guest runs %d of its two claimed containers: %+v", claimed, states)
	}
	_ = gc.Close()

	c.Restart(t)
	waitContainerState(t, c, mine, runtimeapi.ContainerState_CONTAINER_RUNNING)
	ctrs, err := c.Runtime.ListContainers(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ct := range ctrs {
		ids = append(ids, ct.GetId())
		if ct.GetId() == neighbour && ct.GetPodSandboxId() != nativePodID {
			t.Errorf("container %s listed in pod %s, want %s", neighbour, ct.GetPodSandboxId(), nativePodID)
		}
	}
	if len(ids) != 2 || !slices.Contains(ids, mine) || !slices.Contains(ids, neighbour) {
		t.Fatalf("containers after the restart %v, want exactly %s and %s", ids, mine, neighbour)
	}
	if _, err := c.Runtime.ContainerStatus(ctx, rogue, false); status.Code(err) != codes.NotFound {
		t.Errorf("status of the guest's own container: %v, want NotFound", err)
	}
	st, err := c.Runtime.ContainerStatus(ctx, neighbour, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || st.GetStatus().GetStartedAt() != nst.GetStartedAt() {
		t.Errorf("the native container after the guest's claim: %v", st.GetStatus())
	}
	// The native container is still the one on the host: an exec there
	// reads the host kernel's release, not the guest's.
	out, _, err := c.Runtime.ExecSync(ctx, neighbour, []string{"cat", "/proc/sys/kernel/osrelease"}, 30*time.Second)
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil || strings.TrimSpace(string(out)) != strings.TrimSpace(string(host)) {
		t.Errorf("exec in the native container after the claim: %q %v, want the host's release %q", out, err, host)
	}
	ignored := map[string]bool{}
	for _, r := range c.Records() {
		if strings.Contains(r["msg"].(string), "did not make") {
			id, _ := r["container"].(string)
			ignored[id] = true
		}
	}
	if !ignored[rogue] || !ignored[neighbour] {
		t.Errorf("log lines of ignored claims: %v, want %s and %s", ignored, rogue, neighbour)
	}

	for _, p := range []string{vmPodID, nativePodID} {
		if err := c.Runtime.StopPodSandbox(ctx, p); err != nil {
			t.Fatalf("stop pod %s: %v", p, err)
		}
		if err := c.Runtime.RemovePodSandbox(ctx, p); err != nil {
			t.Fatalf("remove pod %s: %v", p, err)
		}
	}
	if pids := qemuPids("aurae-vm-pod-" + vmPodID[:16]); len(pids) != 0 {
		t.Errorf("qemu still runs after RemovePodSandbox: %v", pids)
	}
}

// startVMPod starts an aurae-cri with a busybox image and runs a VM pod
// (handler aurae-vm) named name in it.
func startVMPod(t *testing.T, name string) (c *CRI, image string, pod *runtimeapi.PodSandboxConfig, podID string) {
	t.Helper()
	requireVMImage(t)
	c = startCRI(t)
	image = c.pushBusybox(t, "e2e/busybox:"+name, testimage.Options{})
	pod = c.podConfig(t, name)
	podID, err := c.Runtime.RunPodSandbox(t.Context(), pod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	return c, image, pod, podID
}

// findVMSocket is the guest auraed's socket of the VM named vm under dir.
func findVMSocket(t *testing.T, dir, vm string) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == hypervisor.AuraeSocketName && strings.Contains(p, vm) {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no %s of VM %s under %s", hypervisor.AuraeSocketName, vm, dir)
	}
	return found
}

// TestCRIVMGuestMemoryExhaustion: a container that allocates past its VM's
// memory is killed by the guest's own OOM killer; QEMU stays inside its
// cgroup's limit on the host (never OOM-killed there, same pid), the pod
// stays ready and its other container answers.
func TestCRIVMGuestMemoryExhaustion(t *testing.T) {
	c, image, pod, podID := startVMPod(t, "vmoom")
	ctx := t.Context()
	qemu := qemuPids("aurae-vm-pod-" + podID[:16])
	if len(qemu) != 1 {
		t.Fatalf("qemu of the vm pod: pids %v", qemu)
	}
	memcg := memoryCgroupOf(t, qemu[0])
	limit := readCgroupInt(t, memcg, "memory.limit_in_bytes")
	if limit <= 0 || limit >= 1<<50 {
		t.Fatalf("qemu's memory cgroup %s has no limit (%d)", memcg, limit)
	}
	witness := runContainer(t, c, podID, pod, containerConfig("witness", image, "sleep", "3000"))
	waitContainerState(t, c, witness, runtimeapi.ContainerState_CONTAINER_RUNNING)
	// tail keeps everything it reads while it looks for a newline.
	hog := runContainer(t, c, podID, pod, containerConfig("hog", image, "busybox", "tail", "/dev/zero"))
	deadline := time.Now().Add(5 * time.Minute)
	var st *runtimeapi.ContainerStatus
	for time.Now().Before(deadline) {
		resp, err := c.Runtime.ContainerStatus(ctx, hog, false)
		if err != nil {
			t.Fatal(err)
		}
		if st = resp.GetStatus(); st.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || (st.GetReason() != "OOMKilled" && st.GetExitCode() != 137) {
		t.Fatalf("the memory hog in the guest: state %v, exit %d, reason %q; want killed by the guest's OOM killer", st.GetState(), st.GetExitCode(), st.GetReason())
	}
	if pids := qemuPids("aurae-vm-pod-" + podID[:16]); len(pids) != 1 || pids[0] != qemu[0] {
		t.Fatalf("qemu after the guest's OOM: pids %v, want still %d", pids, qemu[0])
	}
	if oc, err := os.ReadFile(filepath.Join(memcg, "memory.oom_control")); err != nil || !strings.Contains(string(oc), "oom_kill 0") {
		t.Errorf("the host's OOM killer acted in qemu's cgroup: %q %v", oc, err)
	}
	if peak := readCgroupInt(t, memcg, "memory.max_usage_in_bytes"); peak > limit {
		t.Errorf("qemu's cgroup peaked at %d bytes, over its limit %d", peak, limit)
	} else {
		t.Logf("hog: exit %d reason %q; qemu cgroup peak %d MiB of %d MiB", st.GetExitCode(), st.GetReason(), peak>>20, limit>>20)
	}
	if pst, err := c.Runtime.PodSandboxStatus(ctx, podID, false); err != nil || pst.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("vm pod after the guest's OOM: %v %v", pst.GetStatus(), err)
	}
	if out, _, err := c.Runtime.ExecSync(ctx, witness, []string{"echo", "alive"}, 60*time.Second); err != nil || strings.TrimSpace(string(out)) != "alive" {
		t.Errorf("exec in the other container after the guest's OOM: %q %v", out, err)
	}
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
}

// memoryCgroupOf is the v1 memory cgroup directory of a process.
func memoryCgroupOf(t *testing.T, pid int) string {
	t.Helper()
	dir, err := memoryCgroupDir(pid)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func memoryCgroupDir(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			return filepath.Join("/sys/fs/cgroup/memory", parts[2]), nil
		}
	}
	return "", fmt.Errorf("no memory cgroup for pid %d in:\n%s", pid, b)
}

func readCgroupInt(t *testing.T, dir, file string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s/%s: %v", dir, file, err)
	}
	return n
}
