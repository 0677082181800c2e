package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

func TestCRIUpdateResourcesAndReopenLog(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "upd")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("ticker", image, "sh", "-c", "while true; do echo tick; sleep 0.1; done")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}
	id := runContainer(t, c, podID, pod, cfg)
	st := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)

	resp, err := c.Runtime.ContainerStatus(ctx, id, true)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				CgroupsPath string `json:"cgroupsPath"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil || info.RuntimeSpec.Linux.CgroupsPath == "" {
		t.Fatalf("verbose info without the spec's cgroups path: %v %q", err, resp.GetInfo())
	}
	dir := specCgroupDir(t, info.RuntimeSpec.Linux.CgroupsPath)
	limitFile := cgroup.ControllerFile(dir, "memory", "memory.limit_in_bytes")
	if cgroup.Unified() {
		limitFile = cgroup.ControllerFile(dir, "memory", "memory.max")
	}
	readLimit := func() string {
		b, err := os.ReadFile(limitFile)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := readLimit(); got != "67108864" {
		t.Fatalf("limit before update %s", got)
	}
	if err := c.Runtime.UpdateContainerResources(ctx, id, &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 128 << 20}}); err != nil {
		t.Fatal(err)
	}
	if got := readLimit(); got != "134217728" {
		t.Fatalf("limit after update %s, want 134217728", got)
	}
	after, _ := c.Runtime.ContainerStatus(ctx, id, false)
	if after.GetStatus().GetResources().GetLinux().GetMemoryLimitInBytes() != 128<<20 {
		t.Fatalf("status resources %v", after.GetStatus().GetResources())
	}

	// The kubelet's rotation: rename, then ReopenContainerLog.
	logPath := st.GetLogPath()
	waitLog(t, logPath, 1)
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.ReopenContainerLog(ctx, id); err != nil {
		t.Fatal(err)
	}
	lines := waitLog(t, logPath, 2)
	if !strings.HasSuffix(lines[1], " stdout F tick") {
		t.Fatalf("new log file: %q", lines)
	}
	old1, _ := os.ReadFile(logPath + ".1")
	time.Sleep(300 * time.Millisecond)
	old2, _ := os.ReadFile(logPath + ".1")
	if string(old1) != string(old2) {
		t.Fatal("the rotated file still grows")
	}
}
