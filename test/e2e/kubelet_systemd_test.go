package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/kubelet"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestKubeletSystemdDriver runs the real kubelet with cgroupDriver: systemd
// and cgroupsPerQOS against aurae-cri with the systemd driver, where systemd
// is PID 1 on cgroup v2 (the cgroup v2 VM of make test-cgroup2): a CNI
// static pod and a hostNetwork static pod reach Running, each below the
// kubelet's pod slice (kubepods-<qos>-pod<uid>.slice, which the kubelet
// passes as the cgroup parent), and their slices go when the manifests do
// (the kubelet's drain at the end checks).
func TestKubeletSystemdDriver(t *testing.T) {
	if os.Getenv(kubelet.EnvE2E) != "1" {
		t.Skipf("set %s=1 to build and run a real kubelet (make test does)", kubelet.EnvE2E)
	}
	requireRoot(t)
	requireSystemdHost(t)
	c := startCRI(t, "--cgroup-driver", "systemd")
	bin := kubelet.Build(t)
	image := c.Registry.Push(t, "e2e/busybox:kubelet-sd", testimage.MustBusybox(t, testimage.Options{}))
	// The root: the kubelet wants the cpuset and hugetlb controllers in its
	// cgroupRoot, which systemd enables in no slice of ours. kubepods.slice
	// is stopped at the end.
	k := kubelet.Start(t, kubelet.Config{
		Binary: bin, CRIEndpoint: c.Endpoint, CgroupDriver: "systemd",
		CgroupsPerQOS: true, CgroupRoot: "/", StartTimeout: 5 * time.Minute,
	})

	host := k.WriteStaticPod(t, kubelet.BusyboxPod(kubelet.PodSpecOptions{
		Name: "hostnet-sd", Image: image, HostNetwork: true,
		Script: "echo hello from the host network; while true; do sleep 1; done",
	}))
	bridged := k.WriteStaticPod(t, kubelet.BusyboxPod(kubelet.PodSpecOptions{
		Name: "bridged-sd", Namespace: "aurae", Image: image,
		Script: "echo cni says hello; ip -4 -o addr show eth0; while true; do sleep 1; done",
	}))
	const timeout = 5 * time.Minute
	hp := k.WaitPodPhase(t, host.Name, host.Namespace, kubelet.PodRunning, timeout)
	k.WaitContainerLog(t, hp, "main", "hello from the host network", 2*time.Minute)
	bp := k.WaitPodPhase(t, bridged.Name, bridged.Namespace, kubelet.PodRunning, timeout)
	if !strings.HasPrefix(bp.Status.PodIP, strings.TrimSuffix(c.Subnet, "0/24")) {
		t.Errorf("CNI pod IP %q, want one in %s", bp.Status.PodIP, c.Subnet)
	}
	k.WaitContainerLog(t, bp, "main", "cni says hello", 2*time.Minute)

	// The kubelet passed its pod slices as the pods' cgroup parents.
	stem := "kubepods-"
	pods, err := c.Runtime.ListPodSandbox(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 2 {
		t.Fatalf("aurae-cri runs %d pods, want 2", len(pods))
	}
	for _, p := range pods {
		st, err := c.Runtime.PodSandboxStatus(t.Context(), p.GetId(), true)
		if err != nil {
			t.Fatal(err)
		}
		var info struct {
			Config *runtimeapi.PodSandboxConfig `json:"config"`
		}
		if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil {
			t.Fatal(err)
		}
		// The kubelet 1.37 passes the slice's cgroup path.
		parent := info.Config.GetLinux().GetCgroupParent()
		if base := filepath.Base(parent); !strings.HasPrefix(base, stem) || !strings.HasSuffix(base, ".slice") || !strings.Contains(base, "-pod") {
			t.Errorf("pod %s: cgroup parent %q, want the kubelet's %s<qos>-pod<uid>.slice", p.GetMetadata().GetName(), parent, stem)
		}
		if !strings.HasPrefix(st.GetInfo()["info"], "{") || !strings.Contains(st.GetInfo()["info"], strings.TrimSuffix(filepath.Base(parent), ".slice")+"-aurae_"+p.GetId()+".slice") {
			t.Errorf("pod %s: its cgroup is not its slice below %s: %s", p.GetMetadata().GetName(), parent, st.GetInfo()["info"])
		}
	}
}
