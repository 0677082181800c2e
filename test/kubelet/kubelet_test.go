package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

func TestManifestName(t *testing.T) {
	for _, tc := range []struct {
		manifest, name, ns string
	}{
		{"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    name: other\nspec:\n  containers: []\n", "web", "default"},
		{"kind: Pod\nmetadata:\n    namespace: 'kube-system'\n    name: \"dns\"\n", "dns", "kube-system"},
		{"# c\nspec:\n  name: no\nmetadata:\n  name: x\n", "x", "default"},
		{BusyboxPod(PodSpecOptions{Name: "j", Namespace: "ns", Image: "i", Script: "true"}), "j", "ns"},
	} {
		name, ns, err := manifestName(tc.manifest)
		if err != nil || name != tc.name || ns != tc.ns {
			t.Errorf("manifestName(%q) = %q, %q, %v; want %q, %q", tc.manifest, name, ns, err, tc.name, tc.ns)
		}
	}
	if _, _, err := manifestName("kind: Pod\nspec: {}\n"); err == nil {
		t.Error("manifest without a name: no error")
	}
}

func TestParseCRILogLine(t *testing.T) {
	l, err := ParseCRILogLine("2024-01-02T03:04:05.123456789Z stdout F hello world")
	if err != nil || l.Stream != "stdout" || l.Partial || l.Text != "hello world" {
		t.Fatalf("got %+v, %v", l, err)
	}
	l, err = ParseCRILogLine("2024-01-02T03:04:05Z stderr P ")
	if err != nil || !l.Partial || l.Text != "" {
		t.Fatalf("got %+v, %v", l, err)
	}
	for _, bad := range []string{"", "hello", "2024-01-02T03:04:05Z stdin F x", "2024 stdout F x", "2024-01-02T03:04:05Z stdout X x"} {
		if _, err := ParseCRILogLine(bad); err == nil {
			t.Errorf("ParseCRILogLine(%q): no error", bad)
		}
	}
}

func TestKubeletConfiguration(t *testing.T) {
	k := &Kubelet{cfg: Config{
		CRIEndpoint: "unix:///run/x.sock", ImageEndpoint: "unix:///run/x.sock",
		RootDir: "/r", StaticPodDir: "/m", PodLogsDir: "/l", ReadOnlyPort: 1, Port: 2, HealthzPort: 3,
		Config: map[string]any{"maxPods": 7},
	}}
	b, err := json.Marshal(k.kubeletConfiguration("/resolv"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"kind": "KubeletConfiguration", "containerRuntimeEndpoint": "unix:///run/x.sock",
		"staticPodPath": "/m", "podLogsDir": "/l", "cgroupDriver": "cgroupfs", "failCgroupV1": false,
		"failSwapOn": false, "cgroupsPerQOS": false, "readOnlyPort": 1.0, "address": "127.0.0.1",
		"resolvConf": "/resolv", "registerNode": false, "maxPods": 7.0,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if v, ok := got["enforceNodeAllocatable"].([]any); !ok || len(v) != 0 {
		t.Errorf("enforceNodeAllocatable = %v, want []", got["enforceNodeAllocatable"])
	}
}

// TestKubeletContainerdCRI builds the pinned kubelet and runs it in
// standalone mode against containerd's own CRI plugin: the reference
// runtime that proves the helpers, before aurae-cri takes its place.
func TestKubeletContainerdCRI(t *testing.T) {
	if os.Getenv(EnvE2E) != "1" {
		t.Skipf("set %s=1 to build and run a real kubelet (slow)", EnvE2E)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	left := checkNothingLeft(t)
	bin := Build(t)

	reg := testimage.StartRegistry(t)
	pauseRef := reg.Push(t, "pause:test", testimage.MustBusybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sleep", "2147483647"},
	}))
	busyboxRef := reg.Push(t, "busybox:test", testimage.MustBusybox(t, testimage.Options{}))

	cniConf, subnet := "", ""
	if _, err := os.Stat("/opt/cni/bin/bridge"); err == nil {
		cniConf, subnet = bridgeConf(t)
	} else {
		t.Logf("no /opt/cni/bin/bridge (hack/install-cni-plugins.sh): hostNetwork pod only")
	}
	ctd := StartContainerdCRI(t, ContainerdCRIConfig{
		SandboxImage:      pauseRef,
		RegistryConfigDir: reg.HostsDir(t),
		CNIConfDir:        cniConf,
	})
	k := Start(t, Config{Binary: bin, CRIEndpoint: ctd.Endpoint()})
	left.watch(ctd.Dir(), filepath.Dir(k.RootDir()))

	host := k.WriteStaticPod(t, BusyboxPod(PodSpecOptions{
		Name: "hostnet", Image: busyboxRef, HostNetwork: true,
		Script: "echo hello from $(hostname); while true; do sleep 1; done",
	}))
	var cni StaticPod
	if cniConf != "" {
		cni = k.WriteStaticPod(t, BusyboxPod(PodSpecOptions{
			Name: "bridged", Namespace: "aurae", Image: busyboxRef,
			Script: "echo cni says hello; ip -4 -o addr show eth0; while true; do sleep 1; done",
		}))
	}

	const timeout = 3 * time.Minute
	hp := k.WaitPodPhase(t, host.Name, host.Namespace, PodRunning, timeout)
	t.Logf("hostNetwork pod running: %s", hp)
	if !hp.Spec.HostNetwork {
		t.Errorf("pod %s: hostNetwork false", hp.Metadata.Name)
	}
	hostname, _ := os.Hostname()
	k.WaitContainerLog(t, hp, "main", "hello from "+hostname, time.Minute)
	if !strings.HasPrefix(k.ContainerLogPath(hp, "main", 0), k.PodLogsDir()+"/default_hostnet-"+k.NodeName()+"_") {
		t.Errorf("log path %s", k.ContainerLogPath(hp, "main", 0))
	}

	if cniConf != "" {
		cp := k.WaitPodPhase(t, cni.Name, cni.Namespace, PodRunning, timeout)
		t.Logf("CNI pod running: %s", cp)
		if cp.Status.PodIP == "" || !strings.HasPrefix(cp.Status.PodIP, subnet) {
			t.Errorf("CNI pod IP %q, want one in %s0/24", cp.Status.PodIP, subnet)
		}
		log := k.WaitContainerLog(t, cp, "main", "cni says hello", time.Minute)
		if cp.Status.PodIP != "" && !strings.Contains(log, "inet "+cp.Status.PodIP+"/") {
			t.Errorf("the pod's eth0 does not have %s:\n%s", cp.Status.PodIP, log)
		}

		// Deleting the manifest stops the pod and its sandbox.
		k.RemoveStaticPod(t, cni.Name, cni.Namespace)
		k.WaitPodGone(t, cni.Name, cni.Namespace, time.Minute)
		rs := ctd.RuntimeClient(t)
		deadline := time.Now().Add(time.Minute)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
				State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
				LabelSelector: map[string]string{
					"io.kubernetes.pod.name":      cp.Metadata.Name,
					"io.kubernetes.pod.namespace": cp.Metadata.Namespace,
				},
			}})
			cancel()
			if err != nil {
				t.Fatalf("ListPodSandbox: %v", err)
			}
			if len(resp.Items) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sandbox of %s still ready a minute after its manifest was removed", cp.Metadata.Name)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// bridgeConf writes a bridge + loopback CNI config of the test's own (its
// bridge, subnet and host-local data dir) and returns its dir and the
// subnet's prefix ("10.213.N."). The bridge is deleted at the end.
func bridgeConf(t *testing.T) (dir, prefix string) {
	t.Helper()
	dir = t.TempDir()
	n := os.Getpid()%200 + 20
	bridge := fmt.Sprintf("aurkl%d", n)
	prefix = fmt.Sprintf("10.213.%d.", n)
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "aurae-kubelet-test",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": filepath.Join(dir, "ipam"),
					"ranges":  [][]map[string]string{{{"subnet": prefix + "0/24"}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "loopback"},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "10-aurae-kubelet-test.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil &&
			!strings.Contains(string(out), "Cannot find device") {
			t.Errorf("delete bridge %s: %v: %s", bridge, err, out)
		}
	})
	return dir, prefix
}

// leftCheck checks, when the test ends, that nothing of the test is left
// on the machine: kernel tunables and host dirs as before (unless another
// test kubelet still runs), and no mount, dir, log symlink or shim of the
// kubelets and containerds it watches.
type leftCheck struct {
	dirs []string
}

// watch adds the dirs of a kubelet or containerd of the test.
func (lc *leftCheck) watch(dirs ...string) { lc.dirs = append(lc.dirs, dirs...) }

func checkNothingLeft(t *testing.T) *leftCheck {
	lc := &leftCheck{}
	before := map[string]string{}
	for _, s := range Tunables {
		b, err := os.ReadFile(filepath.Join("/proc/sys", s))
		if err != nil {
			t.Fatal(err)
		}
		before[s] = strings.TrimSpace(string(b))
	}
	existed := map[string]bool{}
	for _, d := range hostDirs {
		_, err := os.Lstat(d.path)
		existed[d.path] = err == nil
	}
	t.Cleanup(func() {
		if !otherKubeletRuns() {
			for _, s := range Tunables {
				b, _ := os.ReadFile(filepath.Join("/proc/sys", s))
				if got := strings.TrimSpace(string(b)); got != before[s] {
					t.Errorf("%s = %s after the test, was %s", s, got, before[s])
				}
			}
			for _, d := range hostDirs {
				if _, err := os.Lstat(d.path); (err == nil) != existed[d.path] {
					t.Errorf("%s existed before the test: %v, after: %v", d.path, existed[d.path], err == nil)
				}
			}
			for _, p := range []string{lockPath(), usersPath(), statePath()} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("left behind: %s", p)
				}
			}
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		links, _ := filepath.Glob(filepath.Join(legacyLogDir, "*"))
		for _, d := range lc.dirs {
			for _, l := range strings.Split(string(mounts), "\n") {
				if strings.Contains(l, " "+d) {
					t.Errorf("mount left: %s", l)
				}
			}
			if _, err := os.Lstat(d); err == nil {
				t.Errorf("left behind: %s", d)
			}
			for _, l := range links {
				if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, d+"/") {
					t.Errorf("log symlink left: %s -> %s", l, target)
				}
			}
			for _, pid := range processes("containerd-shim", d) {
				t.Errorf("containerd shim %d left running", pid)
			}
			for _, pid := range processes("kubelet", d) {
				t.Errorf("kubelet %d left running", pid)
			}
		}
	})
	return lc
}

// otherKubeletRuns reports whether some other test kubelet holds the users
// lock (tests of other packages may run one concurrently).
func otherKubeletRuns() bool {
	_, err := os.Stat(usersPath())
	return err == nil
}

func processes(name, arg string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), name) && strings.Contains(string(b), arg) {
			var pid int
			if _, err := fmt.Sscan(e.Name(), &pid); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// TestKubeletContainerdCRIQoS runs the kubelet with cgroupsPerQOS under a
// cgroup root of the test's own: the runtime then gets a pod cgroup parent
// (<root>/kubepods/besteffort/pod<uid>), and the cgroups are gone after.
func TestKubeletContainerdCRIQoS(t *testing.T) {
	if os.Getenv(EnvE2E) != "1" {
		t.Skipf("set %s=1 to build and run a real kubelet (slow)", EnvE2E)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	left := checkNothingLeft(t)
	bin := Build(t)
	reg := testimage.StartRegistry(t)
	pauseRef := reg.Push(t, "pause:test", testimage.MustBusybox(t, testimage.Options{
		Entrypoint: []string{"/bin/sleep", "2147483647"},
	}))
	busyboxRef := reg.Push(t, "busybox:test", testimage.MustBusybox(t, testimage.Options{}))
	ctd := StartContainerdCRI(t, ContainerdCRIConfig{SandboxImage: pauseRef, RegistryConfigDir: reg.HostsDir(t)})

	root := fmt.Sprintf("/aurae-kubelet-test-%d", os.Getpid())
	t.Cleanup(func() {
		for _, c := range []string{"memory", "cpu", "pids", "systemd", "unified"} {
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, root)); err == nil {
				t.Errorf("cgroup %s:%s left", c, root)
			}
		}
	})
	k := Start(t, Config{Binary: bin, CRIEndpoint: ctd.Endpoint(), CgroupsPerQOS: true, CgroupRoot: root})
	left.watch(ctd.Dir(), filepath.Dir(k.RootDir()))
	sp := k.WriteStaticPod(t, BusyboxPod(PodSpecOptions{
		Name: "qos", Image: busyboxRef, HostNetwork: true,
		Script: "cat /proc/self/cgroup; while true; do sleep 1; done",
	}))
	p := k.WaitPodPhase(t, sp.Name, sp.Namespace, PodRunning, 3*time.Minute)
	log := k.WaitContainerLog(t, p, "main", "memory:", time.Minute)
	want := root + "/kubepods/besteffort/pod" + p.Metadata.UID + "/"
	if !strings.Contains(log, want) {
		t.Errorf("container cgroups not under %s:\n%s", want, log)
	}
	k.RemoveStaticPod(t, sp.Name, sp.Namespace)
	k.WaitPodGone(t, sp.Name, sp.Namespace, time.Minute)
}
