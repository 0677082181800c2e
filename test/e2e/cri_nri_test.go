package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/containerd/nri/pkg/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/nriplugin"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// startNRIPlugin connects p (10-name) to aurae-cri's NRI socket and waits
// until aurae-cri calls it.
func startNRIPlugin(t *testing.T, c *CRI, sock, name string, p *nriplugin.Plugin) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := nriplugin.Start(ctx, sock, name, "10", p); err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf(`plugin \"10-%s\" connected and synchronized`, name)
	for !strings.Contains(c.Logs(), mark) {
		select {
		case <-ctx.Done():
			t.Fatalf("aurae-cri never counted plugin %s", name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestCRINRI drives NRI through aurae-cri's real sockets: a plugin that
// connects is synchronized with the pods there are, sees every lifecycle
// event, and the env var and mount it injects are inside the container;
// an adjustment against the rules is refused naming the plugin and the
// field, leaving no container; a plugin that hangs does not keep a pod
// from running.
func TestCRINRI(t *testing.T) {
	sockDir, err := os.MkdirTemp("", "nri-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "nri.sock")
	c := startCRI(t, "--enable-nri", "--nri-socket", sock,
		"--nri-plugin-dir", filepath.Join(sockDir, "plugins"), "--nri-plugin-config-dir", filepath.Join(sockDir, "conf"),
		"--nri-plugin-request-timeout", "2s")
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("NRI socket mode %v, want 0600", st.Mode().Perm())
	}
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:nri", testimage.Options{})

	// A pod that exists before the plugin connects is in its
	// synchronization.
	early := c.podConfig(t, "nri-early")
	earlyID, err := c.Runtime.RunPodSandbox(ctx, early, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(context.Background(), earlyID)
		_ = c.Runtime.RemovePodSandbox(context.Background(), earlyID)
	})

	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "hello"), []byte("from nri\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &nriplugin.Plugin{
		Env:    map[string]string{"NRI_E2E": "injected"},
		Mounts: []*api.Mount{{Destination: "/nri-mnt", Type: "bind", Source: hostDir, Options: []string{"rbind", "ro"}}},
	}
	startNRIPlugin(t, c, sock, "inject", p)
	if pods, _ := p.Synchronized(); !strings.Contains(strings.Join(pods, ","), earlyID) {
		t.Errorf("plugin synchronized with pods %v, want %s among them", pods, earlyID)
	}

	pod := c.podConfig(t, "nri")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(context.Background(), podID)
		_ = c.Runtime.RemovePodSandbox(context.Background(), podID)
	})
	id := runContainer(t, c, podID, pod, containerConfig("nri-ctr", image, "sleep", "1000"))
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	if got := execOut(t, c, id, "sh", "-c", "echo $NRI_E2E"); got != "injected" {
		t.Errorf("NRI_E2E=%q, want injected", got)
	}
	if got := execOut(t, c, id, "cat", "/nri-mnt/hello"); got != "from nri" {
		t.Errorf("/nri-mnt/hello: %q", got)
	}
	// Read-only, as the plugin asked.
	if _, _, err := c.Runtime.ExecSync(ctx, id, []string{"touch", "/nri-mnt/x"}, 30*time.Second); err == nil {
		if _, err := os.Stat(filepath.Join(hostDir, "x")); err == nil {
			t.Error("the container wrote into a read-only NRI mount")
		}
	}
	if err := c.Runtime.UpdateContainerResources(ctx, id, &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 256 << 20}}); err != nil {
		t.Fatal(err)
	}
	// An in-place pod resize: plugins hear of it before and after.
	if _, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: podID,
		Resources: &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 384 << 20}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.StopContainer(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemoveContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, ev := range []struct{ typ, id string }{
		{"RunPodSandbox", podID}, {"CreateContainer", id}, {"PostCreateContainer", id}, {"StartContainer", id},
		{"PostStartContainer", id}, {"UpdateContainer", id}, {"PostUpdateContainer", id},
		{"UpdatePodSandbox", podID}, {"PostUpdatePodSandbox", podID}, {"StopContainer", id},
		{"RemoveContainer", id}, {"StopPodSandbox", podID}, {"RemovePodSandbox", podID},
	} {
		e, err := p.WaitEvent(wctx, ev.typ, ev.id)
		if err != nil {
			t.Error(err)
			continue
		}
		if e.ContainerID != "" && e.Name != "nri-ctr" {
			t.Errorf("%s: container name %q, want nri-ctr", ev.typ, e.Name)
		}
		if ev.typ == "UpdatePodSandbox" && e.MemoryLimit != 384<<20 {
			t.Errorf("UpdatePodSandbox carried a memory limit of %d, want %d", e.MemoryLimit, 384<<20)
		}
	}

	t.Run("resize refused", func(t *testing.T) {
		refuse := &nriplugin.Plugin{RefuseResize: true}
		startNRIPlugin(t, c, sock, "refuse", refuse)
		defer refuse.Stop()
		_, err := c.Runtime.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: earlyID,
			Resources: &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 384 << 20}})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "refuses every resize") {
			t.Fatalf("a resize a plugin refuses: %v, want FailedPrecondition with the plugin's reason", err)
		}
		if got := podResourcesReported(t, c, earlyID); got != nil {
			t.Errorf("the refused resize was recorded in the pod's status: %v", got)
		}
		for _, e := range refuse.Events() {
			if e.Type == "PostUpdatePodSandbox" {
				t.Error("plugins were told of a resize that was refused")
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		bad := &nriplugin.Plugin{Adjust: func(a *api.ContainerAdjustment) {
			a.AddMount(&api.Mount{Destination: "/proc2", Type: "proc", Source: "proc"})
		}}
		startNRIPlugin(t, c, sock, "badmount", bad)
		defer bad.Stop()
		_, err := c.Runtime.CreateContainer(ctx, earlyID, containerConfig("nri-refused", image, "sleep", "1000"), early)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "10-badmount") || !strings.Contains(err.Error(), "mounts[/proc2]") {
			t.Fatalf("CreateContainer with a proc mount from a plugin: %v, want InvalidArgument naming 10-badmount and mounts[/proc2]", err)
		}
		ctrs, err := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: earlyID})
		if err != nil {
			t.Fatal(err)
		}
		if len(ctrs) != 0 {
			t.Errorf("a refused container was left: %v", ctrs)
		}
	})

	t.Run("hung plugin", func(t *testing.T) {
		hung := &nriplugin.Plugin{HangRunPodSandbox: true}
		startNRIPlugin(t, c, sock, "hang", hung)
		defer hung.Stop()
		pod := c.podConfig(t, "nri-hang")
		podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
		if err != nil {
			t.Fatalf("RunPodSandbox with a hung plugin: %v", err)
		}
		defer func() {
			_ = c.Runtime.StopPodSandbox(context.Background(), podID)
			_ = c.Runtime.RemovePodSandbox(context.Background(), podID)
		}()
		select {
		case <-hung.Hung:
		default:
			t.Fatal("RunPodSandbox returned while the plugin still hung")
		}
		if !strings.Contains(c.Logs(), "closing plugin 10-hang") {
			t.Error("aurae-cri did not disconnect the hung plugin")
		}
	})
}

// TestCRINRIVMPod: a plugin's adjustments reach the guest's container of
// a VM pod the same way (an env var and a tmpfs mount), and a host path
// it asks for there is refused naming the plugin and the field.
func TestCRINRIVMPod(t *testing.T) {
	requireVMImage(t)
	sockDir, err := os.MkdirTemp("", "nri-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "nri.sock")
	c := startCRI(t, "--enable-nri", "--nri-socket", sock,
		"--nri-plugin-dir", filepath.Join(sockDir, "plugins"), "--nri-plugin-config-dir", filepath.Join(sockDir, "conf"))
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:nri-vm", testimage.Options{})
	var hostPath atomic.Bool
	p := &nriplugin.Plugin{
		Env:    map[string]string{"NRI_E2E": "in-guest"},
		Mounts: []*api.Mount{{Destination: "/nri-tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m"}}},
		Adjust: func(a *api.ContainerAdjustment) {
			if hostPath.Load() {
				a.AddMount(&api.Mount{Destination: "/host-etc", Type: "bind", Source: "/etc", Options: []string{"rbind", "ro"}})
			}
		},
	}
	startNRIPlugin(t, c, sock, "vm", p)
	pod := c.podConfig(t, "nri-vm")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(context.Background(), podID)
		_ = c.Runtime.RemovePodSandbox(context.Background(), podID)
	})
	id := runContainer(t, c, podID, pod, containerConfig("nri-vm-ctr", image, "sleep", "1000"))
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	if got := execOut(t, c, id, "sh", "-c", "echo $NRI_E2E"); got != "in-guest" {
		t.Errorf("NRI_E2E=%q, want in-guest", got)
	}
	if got := execOut(t, c, id, "sh", "-c", "grep ' /nri-tmp ' /proc/mounts | cut -d' ' -f3"); got != "tmpfs" {
		t.Errorf("/nri-tmp is %q, want a tmpfs", got)
	}
	hostPath.Store(true)
	_, err = c.Runtime.CreateContainer(ctx, podID, containerConfig("nri-vm-host", image, "sleep", "1000"), pod)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "10-vm") || !strings.Contains(err.Error(), "mounts[/host-etc]") {
		t.Fatalf("host path in a VM pod from a plugin: %v, want FailedPrecondition naming 10-vm and mounts[/host-etc]", err)
	}
}
