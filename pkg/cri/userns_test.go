package cri

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func usernsPod(name string, u *runtimeapi.UserNamespace, nso *runtimeapi.NamespaceOption) *runtimeapi.PodSandboxConfig {
	cfg := podConfig(name)
	if nso == nil {
		nso = &runtimeapi.NamespaceOption{}
	}
	nso.UsernsOptions = u
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: nso}}
	return cfg
}

func TestUserNamespaceOptions(t *testing.T) {
	f := newFixture(t, true)
	f.rt.host.UserNamespaces = true
	ids := func(c, h, n uint32) []*runtimeapi.IDMapping {
		return []*runtimeapi.IDMapping{{ContainerId: c, HostId: h, Length: n}}
	}
	pod := func(u, g []*runtimeapi.IDMapping) *runtimeapi.UserNamespace {
		return &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: u, Gids: g}
	}
	for _, tc := range []struct {
		name string
		u    *runtimeapi.UserNamespace
		nso  *runtimeapi.NamespaceOption
	}{
		{"two mappings", pod(append(ids(0, 1000, 10), ids(10, 2000, 10)...), ids(0, 1000, 10)), nil},
		{"container id 0 not mapped", pod(ids(1, 1000, 100000), ids(1, 1000, 100000)), nil},
		{"no gid mapping", pod(ids(0, 1000, 10), nil), nil},
		{"host root", pod(ids(0, 0, 65536), ids(0, 0, 65536)), nil},
		{"past the largest id", pod(ids(0, 1<<32-100, 65536), ids(0, 1000, 10)), nil},
		{"empty", pod(ids(0, 1000, 0), ids(0, 1000, 0)), nil},
		{"container mode", &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_CONTAINER}, nil},
		{"target mode", &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_TARGET}, nil},
		{"node mode with mappings", &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE, Uids: ids(0, 1000, 10)}, nil},
		{"host network", pod(ids(0, 65536, 65536), ids(0, 65536, 65536)), &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}},
		{"host pid", pod(ids(0, 65536, 65536), ids(0, 65536, 65536)), &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE}},
	} {
		_, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: usernsPod("bad", tc.u, tc.nso)})
		if code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
		}
	}
	if len(f.ctrl.pods) != 0 || len(f.store.Sandboxes()) != 0 {
		t.Fatalf("a refused pod left something: %v %v", f.ctrl.pods, f.store.Sandboxes())
	}

	resp, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: usernsPod("good", pod(ids(0, 65536, 65536), ids(0, 131072, 65536)), nil)})
	if err != nil {
		t.Fatal(err)
	}
	got := f.ctrl.pods[resp.GetPodSandboxId()].UserNamespace
	if got == nil || !slices.Equal(got.UIDs, []specs.LinuxIDMapping{{HostID: 65536, Size: 65536}}) || !slices.Equal(got.GIDs, []specs.LinuxIDMapping{{HostID: 131072, Size: 65536}}) {
		t.Errorf("the controller was asked for user namespace %+v", got)
	}
	if _, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: usernsPod("node", &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}, nil)}); err != nil {
		t.Fatal(err)
	}

	// Where id-mapped rootfs do not work, the handler says so and such a
	// pod is refused.
	f.rt.host.UserNamespaces = false
	st, err := f.rt.Status(t.Context(), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetRuntimeHandlers()[0].GetFeatures().GetUserNamespaces() {
		t.Errorf("user namespaces reported where they do not work: %v", st.GetRuntimeHandlers())
	}
	_, err = f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: usernsPod("unsupported", pod(ids(0, 65536, 65536), ids(0, 65536, 65536)), nil)})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("user namespace pod where they do not work: %v, want FailedPrecondition", err)
	}
}

// The probe answers for this host: where it runs as root on a kernel with
// id-mapped overlay layers (5.19), user namespaces are reported, and the
// probe leaves nothing behind.
func TestProbeUserNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts)")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := probeUserNamespaces(dir); err != nil {
		t.Fatalf("this host (Linux >= 5.19, root) should run user namespace pods: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("the probe left %v", entries)
	}
	if err := os.Chmod(dir, 0o700); err == nil && probeUserNamespaces(dir) == nil {
		t.Errorf("a state dir the pod's root cannot pass through is taken")
	}
	f := newFixture(t, true)
	st, err := f.rt.Status(t.Context(), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if !st.GetRuntimeHandlers()[0].GetFeatures().GetUserNamespaces() {
		t.Errorf("user namespaces not reported: %v", st.GetRuntimeHandlers())
	}
}
