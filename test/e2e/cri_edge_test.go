package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// traces lists what a pod leaves on the node: nsfs pins and other mounts
// under the state dir, cgroups under the cgroup root, auraed's pod dirs.
func (c *CRI) traces(t *testing.T) []string {
	t.Helper()
	var out []string
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, c.StateDir) {
				out = append(out, "mount "+l)
			}
		}
	}
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", c.CgroupRoot))
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c.CgroupRoot)); err == nil {
		roots = append(roots, filepath.Join("/sys/fs/cgroup", c.CgroupRoot))
	}
	for _, r := range roots {
		_ = filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				out = append(out, "cgroup "+p)
			}
			return nil
		})
	}
	if ents, err := os.ReadDir(filepath.Join(c.StateDir, "auraed", "pods")); err == nil {
		for _, e := range ents {
			out = append(out, "pod dir "+e.Name())
		}
	}
	slices.Sort(out)
	return out
}

// TestCRIEdgeNames: metadata that would reach CNI_ARGS (K=V;K=V), names or
// logs as something else is refused with InvalidArgument, and a refused
// RunPodSandbox leaves nothing: no pod listed, no netns, no cgroup.
func TestCRIEdgeNames(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	before := c.traces(t)
	for what, mod := range map[string]func(*runtimeapi.PodSandboxMetadata){
		"CNI_ARGS in the name":      func(m *runtimeapi.PodSandboxMetadata) { m.Name = "inj;IP=10.88.0.77" },
		"CNI_ARGS in the namespace": func(m *runtimeapi.PodSandboxMetadata) { m.Namespace = "e2e;IP=10.88.0.77" },
		"CNI_ARGS in the uid":       func(m *runtimeapi.PodSandboxMetadata) { m.Uid = "u;IP=10.88.0.77" },
		"'=' in the name":           func(m *runtimeapi.PodSandboxMetadata) { m.Name = "a=b" },
		"newline in the name":       func(m *runtimeapi.PodSandboxMetadata) { m.Name = "a\nb" },
		"escape in the namespace":   func(m *runtimeapi.PodSandboxMetadata) { m.Namespace = "e2e\x1b[2J" },
		"NUL in the uid":            func(m *runtimeapi.PodSandboxMetadata) { m.Uid = "u\x00v" },
		"name over 253":             func(m *runtimeapi.PodSandboxMetadata) { m.Name = strings.Repeat("a", 254) },
		"namespace over 63":         func(m *runtimeapi.PodSandboxMetadata) { m.Namespace = strings.Repeat("n", 64) },
		"uid over 128":              func(m *runtimeapi.PodSandboxMetadata) { m.Uid = strings.Repeat("u", 129) },
	} {
		pod := c.podConfig(t, "edge")
		mod(pod.Metadata)
		if _, err := c.Runtime.RunPodSandbox(ctx, pod, ""); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
	}
	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 0 {
		t.Errorf("refused pods listed: %v", pods)
	}
	if after := c.traces(t); !slices.Equal(before, after) {
		t.Errorf("refused pods left traces:\nbefore %q\nafter  %q", before, after)
	}

	// Container names follow the same rules (DNS-1123 label characters).
	image := c.pushBusybox(t, "e2e/busybox:edge", testimage.Options{})
	pod := c.podConfig(t, "edge")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a;b=c", "a\tb", "a_b", strings.Repeat("c", 254)} {
		if _, err := c.Runtime.CreateContainer(ctx, podID, containerConfig(name, image, "true"), pod); status.Code(err) != codes.InvalidArgument {
			t.Errorf("container %q: %v, want InvalidArgument", name, err)
		}
	}
	if cs, _ := c.Runtime.ListContainers(ctx, nil); len(cs) != 0 {
		t.Errorf("refused containers listed: %v", cs)
	}
}

// TestCRIEdgeLogPath: a log path through a symlink in the log directory
// (planted by a workload that can write there) is refused and creates
// nothing outside; a plain one in a missing subdirectory works.
func TestCRIEdgeLogPath(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:edgelog", testimage.Options{})
	pod := c.podConfig(t, "edgelog")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.MkdirAll(pod.GetLogDirectory(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(pod.GetLogDirectory(), "evil")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "x.log"), filepath.Join(pod.GetLogDirectory(), "link.log")); err != nil {
		t.Fatal(err)
	}
	for _, lp := range []string{"evil/c.log", "evil/sub/c.log", "link.log"} {
		cfg := containerConfig("c", image, "echo", "hi")
		cfg.LogPath = lp
		if _, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod); status.Code(err) != codes.InvalidArgument {
			t.Errorf("log path %s: %v, want InvalidArgument", lp, err)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("made outside the log directory: %v", ents)
	}
	if cs, _ := c.Runtime.ListContainers(ctx, nil); len(cs) != 0 {
		t.Errorf("refused containers listed: %v", cs)
	}
	cfg := containerConfig("c", image, "echo", "hi")
	cfg.LogPath = "c/0.log"
	id := runContainer(t, c, podID, pod, cfg)
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_EXITED)
	if lines := waitLog(t, filepath.Join(pod.GetLogDirectory(), "c/0.log"), 1); !strings.HasSuffix(lines[0], " hi") {
		t.Errorf("log: %q", lines)
	}
}

// TestCRIEdgeExecSyncOutput: ExecSync output passes both hops whole up to
// the cap, and beyond it is truncated so that the kubelet's client (16 MiB
// replies at most) reads it, without an error.
func TestCRIEdgeExecSyncOutput(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:edgeexec", testimage.Options{})
	pod := c.podConfig(t, "edgeexec")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	id := runContainer(t, c, podID, pod, containerConfig("c", image, "sleep", "300"))
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	const capped = 16<<20 - 64<<10 // pkg/cri maxExecSyncOutput
	for _, tc := range []struct {
		script          string
		wantOut, wantEr int
	}{
		{"head -c 6000000 /dev/zero", 6000000, 0},
		{"head -c 40000000 /dev/zero", capped, 0},
		{"head -c 40000000 /dev/zero; head -c 40000000 /dev/zero >&2", capped / 2, capped - capped/2},
	} {
		stdout, stderr, err := c.Runtime.ExecSync(ctx, id, []string{"sh", "-c", tc.script}, time.Minute)
		if err != nil {
			t.Errorf("%s: %v", tc.script, err)
			continue
		}
		if len(stdout) != tc.wantOut || len(stderr) != tc.wantEr {
			t.Errorf("%s: %d bytes of stdout and %d of stderr, want %d and %d", tc.script, len(stdout), len(stderr), tc.wantOut, tc.wantEr)
		}
	}
}

// TestCRIEdgePodHolder: in a pod that shares its pid namespace, PID 1 is
// auraed's namespace holder; a container given CAP_SYS_PTRACE finds nothing
// of the host through it.
func TestCRIEdgePodHolder(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:edgeholder", testimage.Options{})
	pod := c.podConfig(t, "edgeholder")
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("tracer", image, "sleep", "300")
	cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD},
		Capabilities:     &runtimeapi.Capability{AddCapabilities: []string{"SYS_PTRACE"}},
	}
	id := runContainer(t, c, podID, pod, cfg)
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	sh := func(script string) (string, error) {
		t.Helper()
		out, _, err := c.Runtime.ExecSync(ctx, id, []string{"sh", "-c", script}, 30*time.Second)
		return string(out), err
	}
	if out, err := sh("cat /proc/1/cmdline"); err != nil || !strings.HasPrefix(out, "aurae-pod-holder") {
		t.Fatalf("PID 1: %q %v", out, err)
	}
	if out, err := sh("grep CapEff /proc/self/status"); err != nil || strings.HasSuffix(strings.TrimSpace(out), "0000000000000000") {
		t.Fatalf("the container lacks CAP_SYS_PTRACE: %q %v", out, err)
	}
	if out, err := sh("ls -A /proc/1/root/ /proc/1/cwd/"); err != nil || strings.Contains(out, "etc") || strings.Contains(out, "usr") {
		t.Errorf("ls through PID 1: %q %v", out, err)
	}
	for _, f := range []string{"/proc/1/root/etc/passwd", "/proc/1/root/etc/hostname", "/proc/1/cwd/etc/passwd"} {
		if out, err := sh("cat " + f); err == nil {
			t.Errorf("read %s: %q", f, out)
		}
	}
	if out, err := sh("readlink /proc/1/exe"); err != nil || !strings.HasPrefix(out, "/memfd:aurae-pod-holder") {
		t.Errorf("/proc/1/exe -> %q %v", out, err)
	}
	if out, err := sh("wc -c < /proc/1/exe"); err != nil {
		t.Errorf("size of /proc/1/exe: %v", err)
	} else if n, _ := strconv.Atoi(strings.TrimSpace(out)); n == 0 || n > 4096 {
		t.Errorf("/proc/1/exe has %d bytes: not the reaper", n)
	}
	if _, err := sh("echo x >> /proc/1/exe"); err == nil {
		t.Error("appended to /proc/1/exe")
	}
	if out, err := sh("grep -E '^Cap(Prm|Eff|Bnd)' /proc/1/status"); err != nil || strings.Count(out, "0000000000000000") != 3 {
		t.Errorf("holder capabilities: %q %v", out, err)
	}
	c.mu.Lock()
	daemon := c.cmd.Process.Pid
	c.mu.Unlock()
	logHolderPSS(t, daemon)
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
}

// logHolderPSS logs the PSS of the pod holders the daemon started.
func logHolderPSS(t *testing.T, daemon int) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if !strings.HasPrefix(string(cmd), "aurae-pod-holder") || !strings.Contains(string(st), "\nPPid:\t"+strconv.Itoa(daemon)+"\n") {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "smaps_rollup"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Pss:") || strings.HasPrefix(l, "Rss:") {
				t.Logf("holder %s %s", e.Name(), strings.Join(strings.Fields(l), " "))
			}
		}
	}
}
