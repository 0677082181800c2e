package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// machineState is what a refused request must not change: links, the
// containers' rootfs dirs, the pods' cgroups, IPAM reservations.
func machineState(t *testing.T, c *CRI) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			links = append(links, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	sort.Strings(links)
	var files []string
	for _, pattern := range []string{
		filepath.Join(c.StateDir, "containers", "*"),
		filepath.Join("/sys/fs/cgroup/memory", c.CgroupRoot, "*", "*"),
		filepath.Join(filepath.Dir(c.LogDir), "ipam", "*", "*"),
	} {
		m, _ := filepath.Glob(pattern)
		files = append(files, m...)
	}
	sort.Strings(files)
	return strings.Join(links, " ") + "\n" + strings.Join(files, "\n")
}

func TestCRIErrors(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "errs")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	// A retried RunPodSandbox with the same metadata gets the same pod.
	again, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil || again != podID {
		t.Fatalf("retried RunPodSandbox: %q %v, want %q", again, err, podID)
	}
	cfg := containerConfig("dup", image, "sleep", "300")
	ctrID, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod); err != nil || again != ctrID {
		t.Fatalf("retried CreateContainer: %q %v, want %q", again, err, ctrID)
	}
	if err := c.Runtime.StartContainer(ctx, ctrID); err != nil {
		t.Fatal(err)
	}
	before := machineState(t, c)

	badPod := func(mut func(*runtimeapi.PodSandboxConfig)) func() error {
		return func() error {
			p := c.podConfig(t, "bad")
			mut(p)
			_, err := c.Runtime.RunPodSandbox(ctx, p, "")
			return err
		}
	}
	badCtr := func(mut func(*runtimeapi.ContainerConfig)) func() error {
		return func() error {
			cc := containerConfig("bad", image, "true")
			mut(cc)
			_, err := c.Runtime.CreateContainer(ctx, podID, cc, pod)
			return err
		}
	}
	cases := []struct {
		name     string
		call     func() error
		code     codes.Code
		contains string
	}{
		{"pod without metadata", badPod(func(p *runtimeapi.PodSandboxConfig) { p.Metadata = nil }), codes.InvalidArgument, "metadata"},
		{"pod without name", badPod(func(p *runtimeapi.PodSandboxConfig) { p.Metadata.Name = "" }), codes.InvalidArgument, "name"},
		{"pod with relative log dir", badPod(func(p *runtimeapi.PodSandboxConfig) { p.LogDirectory = "logs" }), codes.InvalidArgument, "log directory"},
		{"pod with unknown handler", func() error { _, err := c.Runtime.RunPodSandbox(ctx, c.podConfig(t, "h"), "nope"); return err }, codes.InvalidArgument, "handler"},
		{"container without metadata", badCtr(func(cc *runtimeapi.ContainerConfig) { cc.Metadata = nil }), codes.InvalidArgument, "metadata"},
		{"container with relative host path", badCtr(func(cc *runtimeapi.ContainerConfig) {
			cc.Mounts = []*runtimeapi.Mount{{HostPath: "relative/dir", ContainerPath: "/x"}}
		}), codes.InvalidArgument, "relative/dir"},
		{"container path with ..", badCtr(func(cc *runtimeapi.ContainerConfig) {
			cc.Mounts = []*runtimeapi.Mount{{HostPath: os.TempDir(), ContainerPath: "/x/../../etc"}}
		}), codes.InvalidArgument, ".."},
		{"log path escaping the pod's dir", badCtr(func(cc *runtimeapi.ContainerConfig) { cc.LogPath = "../../escape.log" }), codes.InvalidArgument, ".."},
		{"image that does not exist", badCtr(func(cc *runtimeapi.ContainerConfig) { cc.Image.Image = c.Registry.Ref("e2e/nope:1") }), codes.NotFound, "nope"},
		{"container in an unknown pod", func() error {
			_, err := c.Runtime.CreateContainer(ctx, "f00d", containerConfig("x", image, "true"), pod)
			return err
		}, codes.NotFound, "f00d"},
		{"name held by a running container", func() error { _, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod); return err }, codes.AlreadyExists, ctrID},
		{"status of an unknown pod", func() error { _, err := c.Runtime.PodSandboxStatus(ctx, "f00d", false); return err }, codes.NotFound, ""},
		{"status of an unknown container", func() error { _, err := c.Runtime.ContainerStatus(ctx, "f00d", false); return err }, codes.NotFound, ""},
		{"start of an unknown container", func() error { return c.Runtime.StartContainer(ctx, "f00d") }, codes.NotFound, ""},
		{"start of a running container", func() error { return c.Runtime.StartContainer(ctx, ctrID) }, codes.FailedPrecondition, ""},
		{"exec in an unknown container", func() error { _, _, err := c.Runtime.ExecSync(ctx, "f00d", []string{"true"}, 0); return err }, codes.NotFound, ""},
		{"stop of an unknown container", func() error { return c.Runtime.StopContainer(ctx, "f00d", 0) }, codes.OK, ""},
		{"remove of an unknown container", func() error { return c.Runtime.RemoveContainer(ctx, "f00d") }, codes.OK, ""},
		{"stop of an unknown pod", func() error { return c.Runtime.StopPodSandbox(ctx, "f00d") }, codes.OK, ""},
		{"remove of an unknown pod", func() error { return c.Runtime.RemovePodSandbox(ctx, "f00d") }, codes.OK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if tc.contains != "" && !strings.Contains(status.Convert(err).Message(), tc.contains) {
				t.Fatalf("message %q does not say %q", status.Convert(err).Message(), tc.contains)
			}
		})
	}
	if after := machineState(t, c); after != before {
		t.Fatalf("refused requests changed the machine:\nbefore %s\nafter  %s", before, after)
	}
}
