package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/kubelet"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestKubeletRunsPodsOnAuraeCRI runs the real kubelet (built from the Go
// module proxy at a pinned version, cached) in standalone mode against
// aurae-cri: a static pod with a CNI address and a hostNetwork static pod
// reach Running, their logs land under /var/log/pods, and deleting a
// manifest removes its pod.
func TestKubeletRunsPodsOnAuraeCRI(t *testing.T) {
	if os.Getenv(kubelet.EnvE2E) != "1" {
		t.Skipf("set %s=1 to build and run a real kubelet (make test does)", kubelet.EnvE2E)
	}
	c := startCRI(t)
	bin := kubelet.Build(t)
	image := c.Registry.Push(t, "e2e/busybox:kubelet", testimage.MustBusybox(t, testimage.Options{}))
	k := kubelet.Start(t, kubelet.Config{Binary: bin, CRIEndpoint: c.Endpoint, PodLogsDir: "/var/log/pods"})

	host := k.WriteStaticPod(t, kubelet.BusyboxPod(kubelet.PodSpecOptions{
		Name: "hostnet", Image: image, HostNetwork: true,
		Script: "echo hello from $(hostname); while true; do sleep 1; done",
	}))
	bridged := k.WriteStaticPod(t, kubelet.BusyboxPod(kubelet.PodSpecOptions{
		Name: "bridged", Namespace: "aurae", Image: image,
		Script: "echo cni says hello; ip -4 -o addr show eth0; while true; do sleep 1; done",
	}))

	const timeout = 3 * time.Minute
	hp := k.WaitPodPhase(t, host.Name, host.Namespace, kubelet.PodRunning, timeout)
	hostname, _ := os.Hostname()
	k.WaitContainerLog(t, hp, "main", "hello from "+hostname, time.Minute)
	if p := k.ContainerLogPath(hp, "main", 0); !strings.HasPrefix(p, "/var/log/pods/default_hostnet-") {
		t.Errorf("log of the hostNetwork pod at %s, want under /var/log/pods", p)
	}

	bp := k.WaitPodPhase(t, bridged.Name, bridged.Namespace, kubelet.PodRunning, timeout)
	subnet := strings.TrimSuffix(c.Subnet, "0/24")
	if !strings.HasPrefix(bp.Status.PodIP, subnet) {
		t.Errorf("CNI pod IP %q, want one in %s", bp.Status.PodIP, c.Subnet)
	}
	log := k.WaitContainerLog(t, bp, "main", "cni says hello", time.Minute)
	if !strings.Contains(log, "inet "+bp.Status.PodIP+"/") {
		t.Errorf("the pod's eth0 does not have %s:\n%s", bp.Status.PodIP, log)
	}

	// Deleting the manifest removes the pod from the kubelet and aurae-cri.
	k.RemoveStaticPod(t, bridged.Name, bridged.Namespace)
	k.WaitPodGone(t, bridged.Name, bridged.Namespace, time.Minute)
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pods, err := c.Runtime.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{
			State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
			LabelSelector: map[string]string{"io.kubernetes.pod.namespace": "aurae"},
		})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(pods) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted pod's sandbox is still ready: %v", pods)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
