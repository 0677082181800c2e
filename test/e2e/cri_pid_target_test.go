package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// targetConfig is a container that joins the pid namespace of target, as
// `kubectl debug --target=<container>` asks (pid mode TARGET).
func targetConfig(name, image, target string, command ...string) *runtimeapi.ContainerConfig {
	cfg := containerConfig(name, image, command...)
	cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: target},
	}
	return cfg
}

// ownPIDConfig is a container with a pid namespace of its own, as the
// kubelet makes every container of a pod that does not share one.
func ownPIDConfig(name, image string, command ...string) *runtimeapi.ContainerConfig {
	cfg := containerConfig(name, image, command...)
	cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
	}
	return cfg
}

// checkPIDTarget starts a debug container targeting app and checks that
// each sees the other's processes.
func checkPIDTarget(t *testing.T, c *CRI, podID string, pod *runtimeapi.PodSandboxConfig, image, app, appMarker string) {
	t.Helper()
	dbg := runContainer(t, c, podID, pod, targetConfig("debug", image, app, "sleep", "1000"))
	waitContainerState(t, c, dbg, runtimeapi.ContainerState_CONTAINER_RUNNING)
	out, _, err := c.Runtime.ExecSync(t.Context(), dbg, []string{"busybox", "ps"}, 30*time.Second)
	if err != nil || !strings.Contains(string(out), appMarker) {
		t.Errorf("ps in the debug container: %v\n%s\nwant the target's %q", err, out, appMarker)
	}
	out, _, err = c.Runtime.ExecSync(t.Context(), app, []string{"busybox", "ps"}, 30*time.Second)
	if err != nil || !strings.Contains(string(out), "sleep 1000") {
		t.Errorf("ps in the target: %v\n%s\nwant the debug container's sleep 1000", err, out)
	}
}

// TestCRIPIDTarget: pid mode TARGET in a native pod; a target in another
// pod, a missing one and one that does not run are refused.
func TestCRIPIDTarget(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:pid", testimage.Options{})
	pod := c.podConfig(t, "pidtarget")
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	app := runContainer(t, c, podID, pod, ownPIDConfig("app", image, "sleep", "1001"))
	waitContainerState(t, c, app, runtimeapi.ContainerState_CONTAINER_RUNNING)
	checkPIDTarget(t, c, podID, pod, image, app, "sleep 1001")

	other := c.podConfig(t, "pidother")
	otherID, err := c.Runtime.RunPodSandbox(ctx, other, "")
	if err != nil {
		t.Fatal(err)
	}
	created, err := c.Runtime.CreateContainer(ctx, podID, ownPIDConfig("created", image, "true"), pod)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		podID  string
		pod    *runtimeapi.PodSandboxConfig
		target string
		want   codes.Code
	}{
		{"target in another pod", otherID, other, app, codes.InvalidArgument},
		{"no target id", podID, pod, "", codes.InvalidArgument},
		{"unknown target", podID, pod, "nope", codes.NotFound},
		{"target not running", podID, pod, created, codes.FailedPrecondition},
	} {
		_, err := c.Runtime.CreateContainer(ctx, tc.podID, targetConfig("bad-"+strings.ReplaceAll(tc.name, " ", "-"), image, tc.target, "true"), tc.pod)
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	for _, id := range []string{podID, otherID} {
		if err := c.Runtime.StopPodSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := c.Runtime.RemovePodSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}
