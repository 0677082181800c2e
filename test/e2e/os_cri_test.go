package e2e

import (
	"testing"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestOSDriverCRI: an auraed whose --cri-endpoint is aurae-cri lists, with
// driver CRI, what the CRI runtime runs: the pod's container with its
// Kubernetes namespace, name and image, and its stats.
func TestOSDriverCRI(t *testing.T) {
	c := startCRI(t)
	a := startAuraed(t, "--cri-endpoint", c.Endpoint)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:os", testimage.Options{})
	pod := c.podConfig(t, "os-cri")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	ctrID := runContainer(t, c, podID, pod, containerConfig("talker", image, "sh", "-c", "echo hello; exec sleep 300"))

	resp, err := a.Client().OS.Containers(ctx, &osapi.ContainersRequest{Namespace: pod.GetMetadata().GetNamespace(), Driver: commonapi.ContainerDriver_CRI})
	if err != nil {
		t.Fatal(err)
	}
	var ci *osapi.ContainerInfo
	for _, x := range resp.GetMessages()[0].GetContainers() {
		if x.GetId() == ctrID {
			ci = x
		}
	}
	if ci == nil || ci.GetNamespace() != "e2e" || ci.GetName() != "talker" || ci.GetPodId() != podID || ci.GetImage() == "" || ci.GetStatus() != "running" {
		t.Fatalf("driver CRI lists %v for the container, all: %v", ci, resp.GetMessages()[0].GetContainers())
	}
	other, err := a.Client().OS.Containers(ctx, &osapi.ContainersRequest{Namespace: "elsewhere", Driver: commonapi.ContainerDriver_CRI})
	if err != nil || len(other.GetMessages()[0].GetContainers()) != 0 {
		t.Fatalf("driver CRI, another namespace: %v, %v; want none", other, err)
	}
	// What auraed runs itself (driver CONTAINERD) is another runtime's.
	own, err := a.Client().OS.Containers(ctx, &osapi.ContainersRequest{})
	if err != nil || len(own.GetMessages()[0].GetContainers()) != 0 {
		t.Fatalf("driver CONTAINERD of an auraed that runs nothing: %v, %v", own, err)
	}

	stats, err := a.Client().OS.Stats(ctx, &osapi.StatsRequest{Driver: commonapi.ContainerDriver_CRI})
	if err != nil {
		t.Fatal(err)
	}
	var st *osapi.Stat
	for _, x := range stats.GetMessages()[0].GetStats() {
		if x.GetId() == ctrID {
			st = x
		}
	}
	if st == nil || st.GetMemoryUsage() == 0 || st.GetNamespace() != "e2e" || st.GetPodId() != podID || st.GetName() != "talker" {
		t.Fatalf("driver CRI stats has %v for the container", st)
	}
}
