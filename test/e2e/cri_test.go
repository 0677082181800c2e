package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// criLogLine is the kubelet's CRI log format.
var criLogLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$`)

func containerConfig(name, image string, command ...string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: image},
		Command:  command,
		LogPath:  name + ".log",
		Labels:   map[string]string{"container": name},
		Linux:    &runtimeapi.LinuxContainerConfig{},
	}
}

// runContainer creates and starts a container in a pod.
func runContainer(t *testing.T, c *CRI, podID string, pod *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	id, err := c.Runtime.CreateContainer(t.Context(), podID, cfg, pod)
	if err != nil {
		t.Fatalf("create %s: %v", cfg.GetMetadata().GetName(), err)
	}
	if err := c.Runtime.StartContainer(t.Context(), id); err != nil {
		t.Fatalf("start %s: %v", cfg.GetMetadata().GetName(), err)
	}
	return id
}

// waitContainerState polls ContainerStatus until the container is in state.
func waitContainerState(t *testing.T, c *CRI, id string, state runtimeapi.ContainerState) *runtimeapi.ContainerStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := c.Runtime.ContainerStatus(t.Context(), id, false)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus().GetState() == state {
			return resp.GetStatus()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("container %s never reached %s", id, state)
	return nil
}

// waitLog waits until the container's log holds n lines and returns them.
func waitLog(t *testing.T, path string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var lines []string
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		lines = strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(b) > 0 && len(lines) >= n {
			return lines
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("log %s has %q, want %d lines", path, lines, n)
	return nil
}

func TestCRILifecycle(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})

	pod := c.podConfig(t, "life")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Runtime.PodSandboxStatus(ctx, podID, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || st.GetStatus().GetNetwork().GetIp() == "" {
		t.Fatalf("pod status %v", st.GetStatus())
	}
	if st.GetStatus().GetMetadata().GetName() != "life" || st.GetInfo()["info"] == "" {
		t.Fatalf("pod status metadata/info: %v", st)
	}

	cfg := containerConfig("talker", image, "sh", "-c", "echo hello; echo oops >&2; head -c 65536 /dev/zero > /written; exec sleep 300")
	ctrID := runContainer(t, c, podID, pod, cfg)
	cst := waitContainerState(t, c, ctrID, runtimeapi.ContainerState_CONTAINER_RUNNING)
	if cst.GetLogPath() == "" || cst.GetImageRef() == "" || cst.GetStartedAt() == 0 {
		t.Fatalf("container status %v", cst)
	}
	lines := waitLog(t, cst.GetLogPath(), 2)
	seen := map[string]bool{}
	for _, l := range lines {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line not in CRI format: %q", l)
		}
		seen[m[3]+" "+m[5]] = true
	}
	if !seen["stdout hello"] || !seen["stderr oops"] {
		t.Fatalf("log lines %q", lines)
	}

	out, errOut, err := c.Runtime.ExecSync(ctx, ctrID, []string{"sh", "-c", "echo hi; echo ho >&2; exit 4"}, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "4") {
		// cri-client reports a non-zero exit as an error carrying the code.
		t.Logf("exec err: %v", err)
	}
	if string(out) != "hi\n" || string(errOut) != "ho\n" {
		t.Fatalf("exec out %q err %q (%v)", out, errOut, err)
	}

	// List with filters.
	all, err := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: podID})
	if err != nil || len(all) != 1 || all[0].GetId() != ctrID {
		t.Fatalf("list by pod: %v %v", all, err)
	}
	byLabel, _ := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"container": "nope"}})
	if len(byLabel) != 0 {
		t.Fatalf("label filter matched %v", byLabel)
	}
	byState, _ := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}})
	if len(byState) != 1 {
		t.Fatalf("state filter: %v", byState)
	}
	byID, _ := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{Id: ctrID[:12]})
	if len(byID) != 1 {
		t.Fatalf("id prefix filter: %v", byID)
	}
	pods, _ := c.Runtime.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": "life"}})
	if len(pods) != 1 || pods[0].GetId() != podID {
		t.Fatalf("pod label filter: %v", pods)
	}
	stats, err := c.Runtime.ContainerStats(ctx, ctrID)
	if err != nil || stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 || stats.GetCpu() == nil {
		t.Fatalf("stats %v %v", stats, err)
	}

	rootfs := filepath.Join(c.StateDir, "containers", ctrID, "rootfs")
	if !mounted(t, rootfs) {
		t.Fatalf("the running container's rootfs is not mounted at %s", rootfs)
	}
	if err := c.Runtime.StopContainer(ctx, ctrID, 2); err != nil {
		t.Fatal(err)
	}
	cst = waitContainerState(t, c, ctrID, runtimeapi.ContainerState_CONTAINER_EXITED)
	if cst.GetFinishedAt() == 0 || cst.GetExitCode() == 0 || cst.GetReason() != "Error" {
		t.Fatalf("stopped container status %v", cst)
	}
	// As containerd's shim at task delete, the exit unmounts the rootfs
	// (RemoveContainer has only records and the snapshot left); the
	// writable layer is still counted.
	if mounted(t, rootfs) {
		t.Errorf("the rootfs of a stopped container is still mounted at %s", rootfs)
	}
	stats, err = c.Runtime.ContainerStats(ctx, ctrID)
	if err != nil || stats.GetWritableLayer().GetUsedBytes().GetValue() < 65536 {
		t.Fatalf("a stopped container's writable layer: %v %v, want the 64 KiB it wrote", stats.GetWritableLayer(), err)
	}
	if err := c.Runtime.RemoveContainer(ctx, ctrID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Runtime.ContainerStatus(ctx, ctrID, false); status.Code(err) != codes.NotFound {
		t.Fatalf("status of removed container: %v", err)
	}
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	// Stop and remove of unknown ids succeed.
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemoveContainer(ctx, ctrID); err != nil {
		t.Fatal(err)
	}
}

func TestCRIExitCodes(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "exits")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cmd, reason string
		code              int32
	}{{"ok", "true", "Completed", 0}, {"three", "exit 3", "Error", 3}} {
		id := runContainer(t, c, podID, pod, containerConfig(tc.name, image, "sh", "-c", tc.cmd))
		st := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_EXITED)
		if st.GetExitCode() != tc.code || st.GetReason() != tc.reason {
			t.Errorf("%s: exit %d reason %q, want %d %q", tc.name, st.GetExitCode(), st.GetReason(), tc.code, tc.reason)
		}
		// A container that exits by itself has its rootfs unmounted too.
		rootfs := filepath.Join(c.StateDir, "containers", id, "rootfs")
		for deadline := time.Now().Add(10 * time.Second); mounted(t, rootfs); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the rootfs of an exited container is still mounted at %s", tc.name, rootfs)
			}
		}
	}
	_ = fmt.Sprint(context.Background())
}
