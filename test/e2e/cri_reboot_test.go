package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRINodeReboot simulates a node reboot under running pods: aurae-cri
// (with its embedded auraed) dies with SIGKILL, every pod process dies with
// its cgroups, every mount goes (pinned namespaces, rootfs) and auraed's
// runtime state is removed. The restarted aurae-cri still lists the pods
// (NOTREADY) and containers (EXITED), and stop and remove succeed for all
// of them, leaving nothing: the kubelet would otherwise keep them
// Terminating forever.
func TestCRINodeReboot(t *testing.T) {
	c := startCrashCRI(t)
	ctx := t.Context()
	busybox := c.pushBusybox(t, "e2e/busybox:reboot", testimage.Options{})

	var ids []string
	for i, shared := range []bool{true, false, false} {
		pod := c.podConfig(t, "reboot-"+string(rune('a'+i)))
		if shared {
			pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}}
		}
		if i == 1 {
			pod.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: int32(freePort(t))}}
		}
		podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, podID)
		if i == 2 {
			continue // a pod with no container
		}
		ids = append(ids, runContainer(t, c.CRI, podID, pod, containerConfig("sleeper", busybox, "sleep", "1000")))
		done := runContainer(t, c.CRI, podID, pod, containerConfig("done", busybox, "true"))
		waitContainerState(t, c.CRI, done, runtimeapi.ContainerState_CONTAINER_EXITED)
		ids = append(ids, done)
	}

	// The reboot.
	c.Kill9()
	removeCgroupTree(t, c.CgroupRoot)
	if err := testimage.UnmountUnder(c.StateDir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(c.StateDir, "auraed")); err != nil {
		t.Fatal(err)
	}

	c.start(t)
	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 3 {
		t.Fatalf("pods after the reboot: %v", pods)
	}
	for _, p := range pods {
		if p.GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			t.Errorf("pod %s is %s after the reboot, want NOTREADY", p.GetId(), p.GetState())
		}
	}
	ctrs, err := c.Runtime.ListContainers(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ctrs) != 4 {
		t.Fatalf("containers after the reboot: %v", ctrs)
	}
	for _, ct := range ctrs {
		if ct.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Errorf("container %s is %s after the reboot, want EXITED", ct.GetId(), ct.GetState())
		}
	}
	for _, p := range pods {
		if err := c.Runtime.StopPodSandbox(ctx, p.GetId()); err != nil {
			t.Errorf("stop %s: %v", p.GetId(), err)
		}
		if err := c.Runtime.RemovePodSandbox(ctx, p.GetId()); err != nil {
			t.Errorf("remove %s: %v", p.GetId(), err)
		}
	}
	ctrd := c.containerd(t)
	defer func() { _ = ctrd.Close() }()
	for _, id := range ids {
		if left := c.leaks(t, id, 0, ctrd); len(left) > 0 {
			t.Errorf("left of %s:\n  %s", id, strings.Join(left, "\n  "))
		}
	}
	if pods, err := c.Runtime.ListPodSandbox(ctx, nil); err != nil || len(pods) != 0 {
		t.Errorf("pods after removal: %v %v", pods, err)
	}
}
