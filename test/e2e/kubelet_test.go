package e2e

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
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

// TestKubeletSeccompAndUserNamespaces runs static pods with seccomp
// profiles through the real kubelet: a container with a RuntimeDefault
// profile of its own, and one inheriting the pod's RuntimeDefault, run in
// seccomp filter mode ("Seccomp:\t2" in /proc/self/status, in the log and
// in an ExecSync), an Unconfined container of the same pod in mode 0. A pod
// with hostUsers: false runs in a user namespace of its own, with the
// mapping the kubelet chose: its root is a host id of 65536 or more.
func TestKubeletSeccompAndUserNamespaces(t *testing.T) {
	if os.Getenv(kubelet.EnvE2E) != "1" {
		t.Skipf("set %s=1 to build and run a real kubelet (make test does)", kubelet.EnvE2E)
	}
	c := startCRI(t)
	bin := kubelet.Build(t)
	image := c.Registry.Push(t, "e2e/busybox:kubelet-seccomp", testimage.MustBusybox(t, testimage.Options{}))
	// With QoS cgroups, as a kubelet runs by default: pods must live in the
	// kubelet's pod cgroups (<root>/kubepods/<qos>/pod<uid>).
	kubeRoot := "/aurae-e2e-kube-" + randomHex(t, 4)
	k := kubelet.Start(t, kubelet.Config{Binary: bin, CRIEndpoint: c.Endpoint, CgroupsPerQOS: true, CgroupRoot: kubeRoot})

	const script = "grep Seccomp: /proc/self/status; while true; do sleep 1; done"
	base := kubelet.PodSpecOptions{Image: image, HostNetwork: true, Script: script}
	withProfile := func(o kubelet.PodSpecOptions, edit func(spec map[string]any, containers []any)) string {
		o.Image, o.HostNetwork, o.Script = base.Image, base.HostNetwork, base.Script
		var m map[string]any
		if err := json.Unmarshal([]byte(kubelet.BusyboxPod(o)), &m); err != nil {
			t.Fatal(err)
		}
		spec := m["spec"].(map[string]any)
		edit(spec, spec["containers"].([]any))
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	profile := func(typ string) map[string]any {
		return map[string]any{"seccompProfile": map[string]any{"type": typ}}
	}
	// Container-level RuntimeDefault, no pod-level profile.
	ctr := k.WriteStaticPod(t, withProfile(kubelet.PodSpecOptions{Name: "seccomp-ctr"}, func(_ map[string]any, cs []any) {
		cs[0].(map[string]any)["securityContext"] = profile("RuntimeDefault")
	}))
	// Pod-level RuntimeDefault: "main" inherits it, "unconfined" opts out.
	pod := k.WriteStaticPod(t, withProfile(kubelet.PodSpecOptions{Name: "seccomp-pod"}, func(spec map[string]any, cs []any) {
		spec["securityContext"] = profile("RuntimeDefault")
		u := map[string]any{}
		for key, v := range cs[0].(map[string]any) {
			u[key] = v
		}
		u["name"] = "unconfined"
		u["securityContext"] = profile("Unconfined")
		spec["containers"] = append(cs, u)
	}))
	// hostUsers: false asks for a user namespace.
	userns := k.WriteStaticPod(t, withProfile(kubelet.PodSpecOptions{Name: "userns"}, func(spec map[string]any, _ []any) {
		spec["hostUsers"] = false
		spec["hostNetwork"] = false
	}))

	const timeout = time.Minute
	for _, tc := range []struct {
		sp        kubelet.StaticPod
		container string
		mode      string
	}{
		{ctr, "main", "2"},
		{pod, "main", "2"},
		{pod, "unconfined", "0"},
	} {
		p := k.WaitPodPhase(t, tc.sp.Name, tc.sp.Namespace, kubelet.PodRunning, timeout)
		want := "Seccomp:\t" + tc.mode
		log := k.WaitContainerLog(t, p, tc.container, "Seccomp:", timeout)
		if !strings.Contains(log, " "+want+"\n") {
			t.Errorf("%s/%s: log has no %q:\n%s", p.Metadata.Name, tc.container, want, log)
		}
		cs := p.ContainerStatus(tc.container)
		if cs == nil || !strings.Contains(cs.ContainerID, "://") {
			t.Fatalf("%s/%s: no container ID: %s", p.Metadata.Name, tc.container, p)
		}
		// An exec'd process gets the container's profile too (the image
		// links no grep applet: busybox sh runs it).
		_, id, _ := strings.Cut(cs.ContainerID, "://")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		stdout, stderr, err := c.Runtime.ExecSync(ctx, id, []string{"/bin/sh", "-c", "grep Seccomp: /proc/self/status"}, 20*time.Second)
		cancel()
		if err != nil || strings.TrimSpace(string(stdout)) != want {
			t.Errorf("%s/%s: ExecSync grep Seccomp: = %q, %q, %v; want %q", p.Metadata.Name, tc.container, stdout, stderr, err, want)
		}
	}

	// The hostUsers: false pod runs as root of a user namespace whose ids
	// are the kubelet's range for it (65536 ids from a multiple of 65536).
	p := k.WaitPodPhase(t, userns.Name, userns.Namespace, kubelet.PodRunning, timeout)
	cs := p.ContainerStatus("main")
	if cs == nil || !strings.Contains(cs.ContainerID, "://") {
		t.Fatalf("%s: no container ID: %s", p.Metadata.Name, p)
	}
	_, id, _ := strings.Cut(cs.ContainerID, "://")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stdout, stderr, err := c.Runtime.ExecSync(ctx, id, []string{"cat", "/proc/self/uid_map"}, 20*time.Second)
	if err != nil {
		t.Fatalf("ExecSync cat /proc/self/uid_map: %v: %s", err, stderr)
	}
	f := strings.Fields(string(stdout))
	if len(f) != 3 || f[0] != "0" || f[2] != "65536" {
		t.Fatalf("hostUsers: false pod's uid_map: %q", stdout)
	}
	host, err := strconv.Atoi(f[1])
	if err != nil || host < 65536 || host%65536 != 0 {
		t.Errorf("hostUsers: false pod's root is host uid %s", f[1])
	}
	t.Logf("hostUsers: false pod: uid_map %q", strings.TrimSpace(string(stdout)))

	// The container's cgroup, seen from the host, is in the kubelet's pod
	// cgroup: BestEffort here (no resources).
	cst, err := c.Runtime.ContainerStatus(ctx, id, true)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(cst.GetInfo()["info"]), &info); err != nil || info.Pid <= 0 {
		t.Fatalf("no pid in ContainerStatus: %v %v", err, cst.GetInfo())
	}
	cg, err := os.ReadFile("/proc/" + strconv.Itoa(info.Pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	want := kubeRoot + "/kubepods/besteffort/pod" + p.Metadata.UID + "/"
	for _, line := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		if strings.Contains(line, ":memory:") && !strings.Contains(line, want) {
			t.Errorf("container's memory cgroup %q is not in the kubelet's pod cgroup %s", line, want)
		}
	}
}
