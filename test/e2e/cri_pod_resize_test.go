package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/cri"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// podCgroupPath is a pod's cgroup below the hierarchy roots, from its
// verbose status.
func podCgroupPath(t *testing.T, c *CRI, podID string) string {
	t.Helper()
	resp, err := c.Runtime.PodSandboxStatus(t.Context(), podID, true)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		CgroupPath string `json:"cgroupPath"`
	}
	if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil || info.CgroupPath == "" {
		t.Fatalf("verbose status without the pod's cgroup: %v %q", err, resp.GetInfo())
	}
	return info.CgroupPath
}

// podResourcesReported are the pod-level resources the verbose status
// reports as applied (nil when none).
func podResourcesReported(t *testing.T, c *CRI, podID string) *runtimeapi.LinuxContainerResources {
	t.Helper()
	resp, err := c.Runtime.PodSandboxStatus(t.Context(), podID, true)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		PodResources *struct {
			Resources *runtimeapi.LinuxContainerResources `json:"resources"`
		} `json:"podResources"`
	}
	if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil {
		t.Fatal(err)
	}
	if info.PodResources == nil {
		return nil
	}
	return info.PodResources.Resources
}

// podLimits are a pod cgroup's cpu and memory limits on this (v1 or
// hybrid) host: cpu.shares, cfs quota and period, memory limit.
type podLimits struct{ shares, quota, period, memory string }

func readPodLimits(t *testing.T, cgroupPath string) podLimits {
	t.Helper()
	read := func(ctrl, file string) string {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", ctrl, cgroupPath, file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	return podLimits{read("cpu", "cpu.shares"), read("cpu", "cpu.cfs_quota_us"), read("cpu", "cpu.cfs_period_us"), read("memory", "memory.limit_in_bytes")}
}

// TestCRIPodResize resizes a running native pod in place (the kubelet's
// UpdatePodSandboxResources) and reads its cgroup back: the pod's cgroup
// has its resources plus its overhead; what is invalid or what this host
// cannot apply is refused with the field named and the pod keeps its
// limits; a crash between the resize's record and its application is
// finished by the restart; a kill -9 of aurae-cri and of the auraed it
// uses keeps the pod's limits and what the status reports.
func TestCRIPodResize(t *testing.T) {
	if !cgroupV1Memory() {
		t.Fatal("this test reads cgroup v1 limits (the machine's kind); no /sys/fs/cgroup/memory")
	}
	a := startAuraed(t)
	c := startCrashCRI(t, "--aurae-address", "unix://"+a.Socket)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "resize")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	ctr := runContainer(t, c.CRI, podID, pod, containerConfig("app", image, "sleep", "600"))
	waitContainerState(t, c.CRI, ctr, runtimeapi.ContainerState_CONTAINER_RUNNING)
	cg := podCgroupPath(t, c.CRI, podID)
	if podResourcesReported(t, c.CRI, podID) != nil {
		t.Fatal("a pod never resized reports applied pod resources")
	}

	// The kubelet's request for 1.5 CPUs and 256 MiB, with a RuntimeClass
	// overhead of 0.25 CPU and 64 MiB.
	overhead := &runtimeapi.LinuxContainerResources{CpuShares: 256, CpuQuota: 25000, CpuPeriod: 100000, MemoryLimitInBytes: 64 << 20}
	resources := &runtimeapi.LinuxContainerResources{CpuShares: 1536, CpuQuota: 150000, CpuPeriod: 100000, MemoryLimitInBytes: 256 << 20}
	if _, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: podID, Overhead: overhead, Resources: resources}); err != nil {
		t.Fatal(err)
	}
	first := podLimits{"1792", "175000", "100000", "335544320"}
	if got := readPodLimits(t, cg); got != first {
		t.Fatalf("pod cgroup after the resize: %+v, want %+v", got, first)
	}
	if got := podResourcesReported(t, c.CRI, podID); got.GetMemoryLimitInBytes() != 256<<20 || got.GetCpuQuota() != 150000 {
		t.Fatalf("status reports %v", got)
	}
	if out, _, err := c.Runtime.ExecSync(ctx, ctr, []string{"echo", "alive"}, 10*time.Second); err != nil || string(out) != "alive\n" {
		t.Fatalf("exec after the resize: %q %v", out, err)
	}

	// Refused, naming the field; the pod keeps its limits.
	for name, tc := range map[string]struct {
		req   *runtimeapi.UpdatePodSandboxResourcesRequest
		code  codes.Code
		field string
	}{
		"negative memory": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
			Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -1}}, codes.InvalidArgument, "resources.memory_limit_in_bytes"},
		"absurd period": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
			Resources: &runtimeapi.LinuxContainerResources{CpuPeriod: 1 << 40}}, codes.InvalidArgument, "resources.cpu_period"},
		"oom score": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
			Overhead: &runtimeapi.LinuxContainerResources{OomScoreAdj: -999}}, codes.InvalidArgument, "overhead.oom_score_adj"},
		"unknown pod": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "nosuchpod",
			Resources: resources}, codes.NotFound, "nosuchpod"},
		// This host keeps its limits in cgroup v1 hierarchies and mounts
		// no hugetlb one: refused by auraed, the pod is put back.
		"unified on v1": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
			Resources: &runtimeapi.LinuxContainerResources{CpuShares: 2, Unified: map[string]string{"memory.oom.group": "1"}}}, codes.FailedPrecondition, "unified"},
		"hugepages": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
			Resources: &runtimeapi.LinuxContainerResources{CpuShares: 2, HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 2 << 20}}}}, codes.FailedPrecondition, "hugepage"},
	} {
		_, err := c.Runtime.UpdatePodSandboxResources(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want %s naming %s", name, err, tc.code, tc.field)
		}
		if got := readPodLimits(t, cg); got != first {
			t.Fatalf("%s: the pod's limits changed to %+v", name, got)
		}
	}

	// Killed between the resize's record and its application: the
	// restart finishes it.
	second := &runtimeapi.LinuxContainerResources{CpuShares: 1024, CpuQuota: 50000, CpuPeriod: 50000, MemoryLimitInBytes: 128 << 20}
	c.aim(t, cri.FaultPodResizeRecorded)
	if _, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID, Resources: second}); err == nil {
		t.Fatal("the resize answered: aurae-cri did not die")
	}
	c.aim(t, "")
	_ = c.wait(t)
	if in := c.intentLeft(t); in.Kind != sandbox.IntentResize || in.ID != podID {
		t.Fatalf("intent left: %+v", in)
	}
	if got := readPodLimits(t, cg); got != first {
		t.Fatalf("the resize was applied before the crash: %+v", got)
	}
	c.Restart(t)
	want := podLimits{"1024", "50000", "50000", "134217728"}
	if got := readPodLimits(t, cg); got != want {
		t.Fatalf("pod cgroup after recovery: %+v, want %+v", got, want)
	}
	if got := podResourcesReported(t, c.CRI, podID); got.GetMemoryLimitInBytes() != 128<<20 || got.GetCpuPeriod() != 50000 {
		t.Fatalf("status after recovery reports %v", got)
	}

	// kill -9 of both daemons: the pod keeps its limits, the status its
	// record, and a further resize works.
	c.Kill9()
	a.Kill9()
	a.Restart(t)
	c.Restart(t)
	if got := readPodLimits(t, cg); got != want {
		t.Fatalf("pod cgroup after kill -9: %+v, want %+v", got, want)
	}
	if got := podResourcesReported(t, c.CRI, podID); got.GetMemoryLimitInBytes() != 128<<20 {
		t.Fatalf("status after kill -9 reports %v", got)
	}
	// The kubelet's read back of a pod without limits: quota -1, memory
	// unlimited; the pod's cgroup loses its limits.
	if _, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
		Resources: &runtimeapi.LinuxContainerResources{CpuShares: 2, CpuQuota: -1, CpuPeriod: 100000, MemoryLimitInBytes: 9223372036854771712}}); err != nil {
		t.Fatal(err)
	}
	if got := readPodLimits(t, cg); got.shares != "2" || got.quota != "-1" || got.memory != "9223372036854771712" {
		t.Fatalf("pod cgroup after lifting the limits: %+v", got)
	}
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID, Resources: second}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("resize of a stopped pod: %v, want FailedPrecondition", err)
	}
}

// cgroupV1Memory: the memory controller is in a v1 hierarchy.
func cgroupV1Memory() bool {
	_, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes")
	return err == nil
}

// TestCRIVMPodResize resizes a VM pod in place within the VM it booted
// with: the host's pod cgroup (the hypervisor's parent) gets the CPU
// limits of resources plus overhead, the guest's pod cell the resources
// (read inside the guest by a privileged container, which sees the
// guest's cgroup tree); the VM's ".vm" memory limit does not move; what
// would need the VM to grow (memory above the guest's, CPUs above its
// vcpus) or what it has not (hugepages) is refused and nothing changes.
// A kill -9 of aurae-cri keeps all of it.
func TestCRIVMPodResize(t *testing.T) {
	requireVMImage(t)
	if !cgroupV1Memory() {
		t.Fatal("this test reads the host's cgroup v1 limits (the machine's kind); no /sys/fs/cgroup/memory")
	}
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:vm", testimage.Options{})
	pod := c.podConfig(t, "vmresize")
	// 1 CPU and 128 MiB: a VM of 2 vcpus (at most the host's CPUs) and
	// 256+128 MiB.
	pod.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuQuota: 100000, CpuPeriod: 100000, MemoryLimitInBytes: 128 << 20}
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(ctx, podID)
		_ = c.Runtime.RemovePodSandbox(ctx, podID)
	})
	cfg := containerConfig("reader", image, "sleep", "600")
	cfg.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
	reader := runContainer(t, c, podID, pod, cfg)
	waitContainerState(t, c, reader, runtimeapi.ContainerState_CONTAINER_RUNNING)
	// The guest's pod cell: the parent of the container's cgroup.
	guestLimits := func() string {
		t.Helper()
		out, stderr, err := c.Runtime.ExecSync(ctx, reader, []string{"sh", "-c",
			`d=/sys/fs/cgroup$(dirname $(cut -d: -f3 /proc/self/cgroup)); echo $(cat $d/memory.max) $(cat $d/cpu.max) $(cat $d/cpu.weight)`}, 60*time.Second)
		if err != nil {
			t.Fatalf("read the guest's pod cell: %v %s", err, stderr)
		}
		return strings.TrimSpace(string(out))
	}
	if got := guestLimits(); got != "max max 100000 100" {
		t.Fatalf("guest pod cell before the resize: %q", got)
	}
	cg := podCgroupPath(t, c, podID)
	vmLimit := func() string {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", cg, ".vm", "memory.limit_in_bytes"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	vmBefore := vmLimit()

	overhead := &runtimeapi.LinuxContainerResources{CpuShares: 128, CpuQuota: 10000, CpuPeriod: 100000, MemoryLimitInBytes: 64 << 20}
	resources := &runtimeapi.LinuxContainerResources{CpuShares: 512, CpuQuota: 100000, CpuPeriod: 100000, MemoryLimitInBytes: 200 << 20}
	if _, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: podID, Overhead: overhead, Resources: resources}); err != nil {
		t.Fatal(err)
	}
	// Host: CPU of resources plus overhead on the hypervisor's parent, its
	// memory bounded by the .vm leaf alone.
	host := readPodLimits(t, cg)
	if host.shares != "640" || host.quota != "110000" || host.period != "100000" || host.memory != "9223372036854771712" {
		t.Errorf("host pod cgroup after the resize: %+v", host)
	}
	if got := vmLimit(); got != vmBefore {
		t.Errorf("the .vm memory limit moved from %s to %s: the VM did not grow", vmBefore, got)
	}
	// Guest: the resources (weight of 512 shares is 20).
	want := "209715200 100000 100000 20"
	if got := guestLimits(); got != want {
		t.Fatalf("guest pod cell after the resize: %q, want %q", got, want)
	}

	for name, tc := range map[string]struct {
		res   *runtimeapi.LinuxContainerResources
		field string
	}{
		"memory above the VM's": {&runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1 << 30}, "memory limit"},
		"CPUs above its vcpus":  {&runtimeapi.LinuxContainerResources{CpuQuota: 1600000, CpuPeriod: 100000}, "vcpus"},
		"hugepages":             {&runtimeapi.LinuxContainerResources{HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 2 << 20}}}, "hugepage"},
	} {
		_, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID, Resources: tc.res})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want FailedPrecondition naming %s", name, err, tc.field)
		}
	}
	if got := guestLimits(); got != want {
		t.Fatalf("guest pod cell after refused resizes: %q, want %q", got, want)
	}
	if got := readPodLimits(t, cg); got != host {
		t.Fatalf("host pod cgroup after refused resizes: %+v, want %+v", got, host)
	}

	c.Kill9()
	c.Restart(t)
	if got := podResourcesReported(t, c, podID); got.GetMemoryLimitInBytes() != 200<<20 {
		t.Fatalf("status after kill -9 reports %v", got)
	}
	if got := guestLimits(); got != want {
		t.Fatalf("guest pod cell after kill -9: %q, want %q", got, want)
	}
}
