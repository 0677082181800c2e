package native

import (
	"context"
	"io/fs"
	"maps"
	"slices"
	"testing"

	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// fakePods is a PodService that allocates pods as auraed answers.
type fakePods struct {
	podsv0.PodServiceClient
	pods map[string]*podsv0.PodStatus
}

func (f *fakePods) Allocate(_ context.Context, req *podsv0.AllocateRequest, _ ...grpc.CallOption) (*podsv0.AllocateResponse, error) {
	id := req.GetPod().GetId()
	paths := &podsv0.AllocateResponse{
		PodId: id, CgroupPath: "aurae/pods/" + id,
		NetworkNamespacePath: "/var/lib/aurae/pods/" + id + "/ns/net", IpcNamespacePath: "/var/lib/aurae/pods/" + id + "/ns/ipc",
		UtsNamespacePath: "/var/lib/aurae/pods/" + id + "/ns/uts",
		ResolvConfPath:   "/var/lib/aurae/pods/" + id + "/resolv.conf", HostsPath: "/var/lib/aurae/pods/" + id + "/hosts",
		HostnamePath: "/var/lib/aurae/pods/" + id + "/hostname", OomScoreAdjMin: 3,
	}
	f.pods[id] = &podsv0.PodStatus{Pod: req.GetPod(), Paths: paths, Containers: []*podsv0.ContainerStatus{
		{Id: "target", PodId: id, State: podsv0.ContainerState_CONTAINER_STATE_RUNNING, Pid: 4242},
	}}
	return paths, nil
}

// ListPods answers one pod per page, in id order, as auraed pages.
func (f *fakePods) ListPods(_ context.Context, req *podsv0.ListPodsRequest, _ ...grpc.CallOption) (*podsv0.ListPodsResponse, error) {
	ids := slices.Sorted(maps.Keys(f.pods))
	i, _ := slices.BinarySearch(ids, req.GetPageToken())
	if i < len(ids) && ids[i] == req.GetPageToken() {
		i++
	}
	resp := &podsv0.ListPodsResponse{}
	if i < len(ids) {
		resp.Pods = []*podsv0.PodStatus{f.pods[ids[i]]}
		if i+1 < len(ids) {
			resp.NextPageToken = ids[i]
		}
	}
	return resp, nil
}

// TestNativeListPodsPages: ListPods follows the pages to the last.
func TestNativeListPodsPages(t *testing.T) {
	fake := &fakePods{pods: map[string]*podsv0.PodStatus{}}
	c := WithClient(fake)
	for _, id := range []string{"c", "a", "b"} {
		if _, err := c.CreatePod(t.Context(), controller.PodSpec{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	pods, err := WithClient(fake).ListPods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range pods {
		ids = append(ids, p.ID)
	}
	if !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("pods %v, want a b c", ids)
	}
}

func (f *fakePods) ContainerStatus(_ context.Context, req *podsv0.ContainerStatusRequest, _ ...grpc.CallOption) (*podsv0.ContainerStatusResponse, error) {
	for _, p := range f.pods {
		for _, c := range p.GetContainers() {
			if c.GetId() == req.GetContainerId() {
				return &podsv0.ContainerStatusResponse{Status: c}, nil
			}
		}
	}
	return &podsv0.ContainerStatusResponse{}, nil
}

// TestNativeFactsMakeTheSpec: a native pod's facts, from its allocation,
// make through ocispec a spec with the pod's pinned namespaces, cgroup,
// files, auraed's OOM floor and the PID target's namespace; a controller
// that restarted finds the facts again through ListPods.
func TestNativeFactsMakeTheSpec(t *testing.T) {
	fake := &fakePods{pods: map[string]*podsv0.PodStatus{}}
	c := WithClient(fake)
	pod, err := c.CreatePod(t.Context(), controller.PodSpec{ID: "pod1", Hostname: "web", PID: controller.NamespaceContainer})
	if err != nil {
		t.Fatal(err)
	}
	if pod.NetNSPath != "/var/lib/aurae/pods/pod1/ns/net" || pod.CgroupPath != "aurae/pods/pod1" {
		t.Fatalf("pod %+v", pod)
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "debug"},
		Image:    &runtimeapi.ImageSpec{Image: "app"},
		Mounts:   []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/srv/data"}},
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources:       &runtimeapi.LinuxContainerResources{OomScoreAdj: -999},
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "target"}},
		},
	}
	for _, ctl := range []*Controller{c, WithClient(fake)} { // the second knows the pod only from ListPods
		facts, err := ctl.PrepareContainer(t.Context(), "pod1", controller.ContainerFiles{ID: "ctr1", Rootfs: "/var/lib/aurae-cri/rootfs/ctr1", PIDTarget: "target"})
		if err != nil {
			t.Fatal(err)
		}
		sp, err := ocispec.Generate(ocispec.Input{
			ID: "ctr1", SandboxID: "pod1", Config: cfg, Sandbox: &runtimeapi.PodSandboxConfig{}, Pod: facts,
			Image: imagespec.ImageConfig{Cmd: []string{"/bin/sh"}}, RootFS: emptyFS{},
		})
		if err != nil {
			t.Fatal(err)
		}
		ns := map[specs.LinuxNamespaceType]string{}
		for _, n := range sp.Linux.Namespaces {
			ns[n.Type] = n.Path
		}
		want := map[specs.LinuxNamespaceType]string{
			specs.NetworkNamespace: "/var/lib/aurae/pods/pod1/ns/net", specs.IPCNamespace: "/var/lib/aurae/pods/pod1/ns/ipc",
			specs.UTSNamespace: "/var/lib/aurae/pods/pod1/ns/uts", specs.PIDNamespace: "/proc/4242/ns/pid",
			specs.MountNamespace: "", specs.CgroupNamespace: "",
		}
		for k, v := range want {
			if got, ok := ns[k]; !ok || got != v {
				t.Errorf("%s namespace %q, want %q", k, got, v)
			}
		}
		if sp.Root.Path != "/var/lib/aurae-cri/rootfs/ctr1" || sp.Linux.CgroupsPath != "/aurae/pods/pod1/ctr1" || sp.Hostname != "web" {
			t.Errorf("root %v cgroups %q hostname %q", sp.Root, sp.Linux.CgroupsPath, sp.Hostname)
		}
		if *sp.Process.OOMScoreAdj != 3 {
			t.Errorf("oomScoreAdj %d, want auraed's 3", *sp.Process.OOMScoreAdj)
		}
		mounts := map[string]string{}
		for _, m := range sp.Mounts {
			mounts[m.Destination] = m.Source
		}
		if mounts["/data"] != "/srv/data" || mounts["/etc/hosts"] != "/var/lib/aurae/pods/pod1/hosts" {
			t.Errorf("mounts %v", mounts)
		}
	}
	if _, err := c.PrepareContainer(t.Context(), "nopod", controller.ContainerFiles{ID: "x", Rootfs: "/r"}); err == nil {
		t.Error("facts of an unknown pod")
	}
}

// emptyFS is a rootfs without /etc/passwd.
type emptyFS struct{}

func (emptyFS) Open(string) (fs.File, error) { return nil, fs.ErrNotExist }
