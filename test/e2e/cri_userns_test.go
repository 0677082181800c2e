package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIUserNamespace runs a pod with a user namespace of its own
// (hostUsers: false) and observes it from inside and from the host: the
// mapping in /proc/self/uid_map, the image's files owned by the pod's root,
// what the container writes to its rootfs stored as the mapped host ids,
// a host volume owned by host root writable by the pod's root (id-mapped),
// the container's processes running as the mapped host uid. A mode the
// runtime does not support is refused and leaves nothing.
func TestCRIUserNamespace(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	st, err := c.Runtime.Status(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.GetRuntimeHandlers() {
		if h.GetName() == "" && !h.GetFeatures().GetUserNamespaces() {
			t.Fatalf("the default handler reports no user namespace support here: %v", h)
		}
	}
	image := c.pushBusybox(t, "e2e/busybox:userns", testimage.Options{})
	const hostID = 3 * 65536
	mapping := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: hostID, Length: 65536}}
	userns := &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: mapping, Gids: mapping}}

	pod := c.podConfig(t, "userns")
	pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: userns}
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(ctx, podID)
		_ = c.Runtime.RemovePodSandbox(ctx, podID)
	})

	volume := t.TempDir() // host root's, 0700 (t.TempDir)
	if err := os.WriteFile(filepath.Join(volume, "from-host"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := secConfig("app", image, &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: userns})
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: volume}}
	id := runContainer(t, c, podID, pod, cfg)

	if got := strings.Fields(execOut(t, c, id, "cat", "/proc/self/uid_map")); strings.Join(got, " ") != "0 "+strconv.Itoa(hostID)+" 65536" {
		t.Errorf("uid_map: %v", got)
	}
	if got := strings.Fields(execOut(t, c, id, "cat", "/proc/self/gid_map")); strings.Join(got, " ") != "0 "+strconv.Itoa(hostID)+" 65536" {
		t.Errorf("gid_map: %v", got)
	}
	if got := execOut(t, c, id, "id", "-u"); got != "0" {
		t.Errorf("id -u: %s", got)
	}
	// The image's files are the pod root's (id-mapped layers).
	for _, line := range strings.Split(execOut(t, c, id, "ls", "-nd", "/bin/busybox", "/etc"), "\n") {
		if f := strings.Fields(line); len(f) < 4 || f[2] != "0" || f[3] != "0" {
			t.Errorf("owner of the image's files: %q", line)
		}
	}
	execOut(t, c, id, "sh", "-c", "echo x > /written && chown 1000:1000 /written && echo y > /data/from-pod && cat /data/from-host")

	// On the host: the container's files as the mapped ids, its process as
	// the mapped uid.
	cs, err := c.Runtime.ContainerStatus(ctx, id, true)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(cs.GetInfo()["info"]), &info); err != nil {
		t.Fatal(err)
	}
	if pid := strconv.Itoa(info.Pid); info.Pid > 0 {
		b, err := os.ReadFile("/proc/" + pid + "/status")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "Uid:\t"+strconv.Itoa(hostID)+"\t") {
			t.Errorf("the container's process on the host:\n%s", b)
		}
	} else {
		t.Errorf("no pid in ContainerStatus info: %v", cs.GetInfo())
	}
	rootfs := filepath.Join(c.StateDir, "containers", id, "rootfs")
	var fi syscall.Stat_t
	if err := syscall.Stat(filepath.Join(rootfs, "written"), &fi); err != nil {
		t.Fatal(err)
	}
	if fi.Uid != hostID+1000 || fi.Gid != hostID+1000 {
		t.Errorf("a file the container chowned to 1000:1000 is %d:%d on the host, want %d", fi.Uid, fi.Gid, hostID+1000)
	}
	if err := syscall.Stat(filepath.Join(volume, "from-pod"), &fi); err != nil {
		t.Fatal(err)
	}
	if fi.Uid != 0 {
		t.Errorf("a file the pod's root wrote in an id-mapped volume is uid %d on the host, want 0", fi.Uid)
	}

	// The refusals leave nothing.
	before, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, u := range map[string]*runtimeapi.UserNamespace{
		"container mode": {Mode: runtimeapi.NamespaceMode_CONTAINER},
		"two mappings":   {Mode: runtimeapi.NamespaceMode_POD, Uids: append(mapping, mapping...), Gids: mapping},
		"host root":      {Mode: runtimeapi.NamespaceMode_POD, Uids: []*runtimeapi.IDMapping{{HostId: 0, Length: 65536}}, Gids: mapping},
	} {
		bad := c.podConfig(t, "userns-bad")
		bad.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{UsernsOptions: u}}
		if _, err := c.Runtime.RunPodSandbox(ctx, bad, ""); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	after, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("refused pods left sandboxes: %v", after)
	}
	// A container that asks for other mappings than its pod's.
	other := secConfig("other", image, &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
		UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: []*runtimeapi.IDMapping{{HostId: 65536, Length: 65536}}, Gids: mapping},
	}})
	if _, err := c.Runtime.CreateContainer(ctx, podID, other, pod); status.Code(err) != codes.InvalidArgument {
		t.Errorf("container with other mappings: %v, want InvalidArgument", err)
	}
}
