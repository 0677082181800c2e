package pods

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// A pod with a user namespace: its namespaces are owned by it, its
// containers join it and run as host ids of its mapping, and the specs
// that would leave it are refused.
func TestUserNamespacePod(t *testing.T) {
	t.Run("auraed", func(t *testing.T) { testUserNamespacePod(t, "/proc/self/exe") })
	// aurae-holder in a dir the pod's root cannot traverse (0700, as the
	// e2e tests' bin dir): a user namespace's holder must not need it.
	t.Run("aurae-holder installed", func(t *testing.T) {
		bin := buildHolder(t)
		if err := os.Chmod(filepath.Dir(bin), 0o700); err != nil {
			t.Fatal(err)
		}
		testUserNamespacePod(t, bin)
	})
}

func testUserNamespacePod(t *testing.T, bin string) {
	saved := holderBinary
	holderBinary = func() string { return bin }
	t.Cleanup(func() { holderBinary = saved })
	e := newEnv(t)
	// The pod's root is not the owner of the test's temporary directories:
	// it must be able to pass through them to its rootfs, as through
	// aurae-cri's state directory (0711).
	for d := filepath.Dir(e.rootfs); d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	// The rootfs is the pod's root's, as aurae-cri's id-mapped one is.
	if err := filepath.Walk(e.rootfs, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 200000, 200000)
	}); err != nil {
		t.Fatal(err)
	}
	ids := []*podsv0.IDMapping{{ContainerId: 0, HostId: 200000, Size: 65536}}
	paths := e.allocate(&podsv0.Pod{Id: "userns", UserNamespace: &podsv0.UserNamespace{UidMappings: ids, GidMappings: ids}})
	if paths.GetUserNamespacePath() == "" {
		t.Fatalf("no user namespace path: %v", paths)
	}
	var userIno unix.Stat_t
	if err := unix.Stat(paths.GetUserNamespacePath(), &userIno); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{paths.GetNetworkNamespacePath(), paths.GetIpcNamespacePath(), paths.GetUtsNamespacePath()} {
		f, err := os.Open(ns)
		if err != nil {
			t.Fatal(err)
		}
		owner, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_USERNS)
		f.Close()
		if err != nil {
			t.Fatalf("owner of %s: %v", ns, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(owner, &st)
		unix.Close(owner)
		if err != nil {
			t.Fatal(err)
		}
		if st.Ino != userIno.Ino {
			t.Errorf("%s is not owned by the pod's user namespace", ns)
		}
	}

	e.start("userns", e.container("a", spec(t, nil, "sleep", "1000")))
	if got := strings.Fields(e.mustExec("a", "cat", "/proc/self/uid_map")); strings.Join(got, " ") != "0 200000 65536" {
		t.Errorf("uid_map in the container: %v", got)
	}
	if got := e.mustExec("a", "id", "-u"); got != "0\n" {
		t.Errorf("id -u: %q", got)
	}
	st := e.status("a")
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(st.GetPid())) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if uid := grepLines(string(b), "Uid:"); !strings.Contains(uid, "\t200000\t") {
		t.Errorf("the container's process on the host: %s", uid)
	}
	// /etc/hosts is the pod's file, owned by host root: id-mapped, the
	// pod's root owns it.
	if got := e.mustExec("a", "ls", "-n", "/etc/hosts"); !strings.Contains(got, " 0 ") {
		t.Errorf("/etc/hosts: %q", got)
	}

	for name, mod := range map[string]func(*specs.Spec){
		"new user namespace": func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		},
		"node user namespace": func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: "/proc/1/ns/user"})
		},
		"other mappings": func(s *specs.Spec) {
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 1}}
			s.Linux.GIDMappings = s.Linux.UIDMappings
		},
		"mount with other mappings": func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/etc", Options: []string{"rbind"},
				UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}, GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}})
		},
	} {
		_, err := e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: "userns", Container: e.forPod("userns", e.container("bad", spec(t, mod, "true")))})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "userns"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func TestUserNamespaceRefused(t *testing.T) {
	e := newEnv(t)
	ids := func(c, h, n uint32) []*podsv0.IDMapping {
		return []*podsv0.IDMapping{{ContainerId: c, HostId: h, Size: n}}
	}
	node := podsv0.NamespaceMode_NAMESPACE_MODE_NODE
	for name, p := range map[string]*podsv0.Pod{
		"two mappings":   {UserNamespace: &podsv0.UserNamespace{UidMappings: append(ids(0, 1000, 10), ids(10, 5000, 10)...), GidMappings: ids(0, 1000, 10)}},
		"no gid mapping": {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 1000, 10)}},
		"container id 1": {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(1, 1000, 10), GidMappings: ids(1, 1000, 10)}},
		"host root":      {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 0, 65536), GidMappings: ids(0, 1000, 10)}},
		"wraps":          {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 1<<32-10, 65536), GidMappings: ids(0, 1000, 10)}},
		"empty":          {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 1000, 0), GidMappings: ids(0, 1000, 10)}},
		"node network":   {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 1000, 10), GidMappings: ids(0, 1000, 10)}, Namespaces: &podsv0.NamespaceOptions{Network: node}},
		"node pid":       {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 1000, 10), GidMappings: ids(0, 1000, 10)}, Namespaces: &podsv0.NamespaceOptions{Pid: node}},
		"node ipc":       {UserNamespace: &podsv0.UserNamespace{UidMappings: ids(0, 1000, 10), GidMappings: ids(0, 1000, 10)}, Namespaces: &podsv0.NamespaceOptions{Ipc: node}},
	} {
		p.Id = "refused"
		if _, err := e.svc.Allocate(context.Background(), &podsv0.AllocateRequest{Pod: p}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// A pod without a user namespace: no id-mapped mount.
	e.allocate(&podsv0.Pod{Id: "plain"})
	mod := func(s *specs.Spec) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/etc", Options: []string{"rbind"},
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 10}}, GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 10}}})
	}
	_, err := e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: "plain", Container: e.forPod("plain", e.container("bad", spec(t, mod, "true")))})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("id-mapped mount in a pod without a user namespace: %v, want InvalidArgument", err)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "plain"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}
