package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// fakePods is the guest PodService: one pod as the guest allocated it (on
// the guest's network), and the calls the tests make.
type fakePods struct {
	podsv0.PodServiceClient
	started *podsv0.StartRequest
	removed []string
	// log is the guest's log of the containers, when there is one.
	log *fakeGuestLog
}

func (f *fakePods) ContainerLog(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[podsv0.ContainerLogRequest, podsv0.ContainerLogResponse], error) {
	if f.log == nil {
		return nil, fmt.Errorf("no log: %w", errdefs.ErrUnavailable)
	}
	return &fakeLogClient{ctx: ctx, g: f.log}, nil
}

// fakeLogClient is the gRPC side of a fakeGuestLog stream: the start
// request opens it.
type fakeLogClient struct {
	grpc.ClientStream
	ctx context.Context
	g   *fakeGuestLog
	s   logStream
}

func (c *fakeLogClient) Send(r *podsv0.ContainerLogRequest) error {
	if st := r.GetStart(); st != nil {
		s, err := c.g.open(c.ctx, st.GetContainerId(), st.GetOffset())
		c.s = s
		return err
	}
	return c.s.Send(r)
}

func (c *fakeLogClient) Recv() (*podsv0.ContainerLogResponse, error) { return c.s.Recv() }

func (f *fakePods) ListPods(context.Context, *podsv0.ListPodsRequest, ...grpc.CallOption) (*podsv0.ListPodsResponse, error) {
	return &podsv0.ListPodsResponse{Pods: []*podsv0.PodStatus{{
		Pod: &podsv0.Pod{Id: "pod1", Hostname: "web", Namespaces: &podsv0.NamespaceOptions{
			Network: podsv0.NamespaceMode_NAMESPACE_MODE_NODE, Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER,
		}},
		Paths: &podsv0.AllocateResponse{
			PodId: "pod1", CgroupPath: "aurae/pods/pod1", IpcNamespacePath: "/guest/pods/pod1/ns/ipc",
			ResolvConfPath: "/guest/pods/pod1/resolv.conf", HostsPath: "/guest/pods/pod1/hosts", HostnamePath: "/guest/pods/pod1/hostname",
			OomScoreAdjMin: 5,
		},
		Containers: []*podsv0.ContainerStatus{{Id: "target", PodId: "pod1", State: podsv0.ContainerState_CONTAINER_STATE_RUNNING, Pid: 77}},
	}}}, nil
}

func (f *fakePods) ContainerStatus(_ context.Context, req *podsv0.ContainerStatusRequest, _ ...grpc.CallOption) (*podsv0.ContainerStatusResponse, error) {
	return &podsv0.ContainerStatusResponse{Status: &podsv0.ContainerStatus{Id: req.GetContainerId(), PodId: "pod1", State: podsv0.ContainerState_CONTAINER_STATE_RUNNING, Pid: 77}}, nil
}

func (f *fakePods) Start(_ context.Context, req *podsv0.StartRequest, _ ...grpc.CallOption) (*podsv0.StartResponse, error) {
	f.started = req
	return &podsv0.StartResponse{ContainerId: req.GetContainer().GetId(), Pid: 42}, nil
}

func (f *fakePods) RemoveContainer(_ context.Context, req *podsv0.RemoveContainerRequest, _ ...grpc.CallOption) (*podsv0.RemoveContainerResponse, error) {
	f.removed = append(f.removed, req.GetContainerId())
	return &podsv0.RemoveContainerResponse{}, nil
}

// TestVMFactsMakeTheGuestSpec: PrepareContainer shares the rootfs, the log
// dir and a volume into the VM, and the guest pod's facts make, through
// ocispec, a spec with the guest's paths only (rootfs, volume, pod files,
// namespaces, cgroup, OOM floor, the PID target's namespace); StartContainer
// has the guest stream the log and the host write it (the log dir is not
// shared); RemoveContainer undoes the mounts and stops the log writer.
func TestVMFactsMakeTheGuestSpec(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (bind mounts)")
	}
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	volume := filepath.Join(tmp, "volume")
	for _, d := range []string{rootfs, volume} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "marker"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := &fakePods{log: newFakeGuestLog(100)}
	c := &Controller{cfg: Config{StateDir: filepath.Join(tmp, "vmpods")}, log: slog.Default(), pods: map[string]*vmPod{}, ctrs: map[string]string{}, writers: map[string]*logWriter{}}
	t.Cleanup(func() { _ = c.Close() })
	dir := c.podDir("pod1")
	if err := os.MkdirAll(sharedDir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	c.pods["pod1"] = &vmPod{id: "pod1", dir: dir, guest: &guest{pods: native.WithClient(fake)}}
	t.Cleanup(func() { _ = unmountUnder(tmp, tmp) })

	// The CRI makes the log dir (containerLogPath).
	logPath := filepath.Join(tmp, "logs", "ctr", "0.log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	cid := "0123456789abcdef0123"
	facts, err := c.PrepareContainer(t.Context(), "pod1", controller.ContainerFiles{
		ID: cid, Rootfs: rootfs, LogPath: logPath, Mounts: []controller.Mount{{Source: volume, Readonly: true}}, PIDTarget: "target",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Image:    &runtimeapi.ImageSpec{Image: "app"},
		Mounts:   []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: volume}},
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources:       &runtimeapi.LinuxContainerResources{OomScoreAdj: -10},
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "target"}},
		},
	}
	sp, err := ocispec.Generate(ocispec.Input{
		ID: cid, SandboxID: "pod1", Config: cfg, Sandbox: &runtimeapi.PodSandboxConfig{},
		Image: imagespec.ImageConfig{Cmd: []string{"/bin/sh"}}, Pod: facts, RootfsHere: rootfs,
	})
	if err != nil {
		t.Fatal(err)
	}
	guestDir := "/run/aurae/shared/c/0123456789abcdef"
	if sp.Root.Path != guestDir+"/rootfs" || sp.Linux.CgroupsPath != "/aurae/pods/pod1/"+cid || sp.Hostname != "" {
		t.Fatalf("root %v cgroups %q hostname %q", sp.Root, sp.Linux.CgroupsPath, sp.Hostname)
	}
	if *sp.Process.OOMScoreAdj != 5 {
		t.Errorf("oomScoreAdj %d, want the guest auraed's 5", *sp.Process.OOMScoreAdj)
	}
	ns := map[specs.LinuxNamespaceType]string{}
	for _, n := range sp.Linux.Namespaces {
		ns[n.Type] = n.Path
	}
	if _, ok := ns[specs.NetworkNamespace]; ok {
		t.Errorf("a network namespace in a VM pod's container: %v", ns)
	}
	if ns[specs.PIDNamespace] != "/proc/77/ns/pid" || ns[specs.IPCNamespace] != "/guest/pods/pod1/ns/ipc" {
		t.Errorf("namespaces %v", ns)
	}
	mounts := map[string]string{}
	for _, m := range sp.Mounts {
		mounts[m.Destination] = m.Source
		if strings.HasPrefix(m.Source, tmp) {
			t.Errorf("a host path in the guest's spec: %+v", m)
		}
	}
	if mounts["/data"] != guestDir+"/m0" || mounts["/etc/hosts"] != "/guest/pods/pod1/hosts" || mounts["/etc/resolv.conf"] != "/guest/pods/pod1/resolv.conf" {
		t.Errorf("mounts %v", mounts)
	}

	if _, err := c.StartContainer(t.Context(), "pod1", controller.Container{ID: cid, Spec: []byte("{}"), LogPath: logPath}); err != nil {
		t.Fatal(err)
	}
	if got := fake.started.GetContainer(); got.GetLogPath() != "" || !got.GetLogStream() {
		t.Fatalf("container %v: want its log streamed, no log path", got)
	}
	hostDir := filepath.Join(dir, "shared", "c", "0123456789abcdef")
	for _, f := range []string{"rootfs/marker", "m0"} {
		if _, err := os.Stat(filepath.Join(hostDir, f)); err != nil {
			t.Fatalf("not shared: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(hostDir, "log")); !os.IsNotExist(err) {
		t.Errorf("the log dir is shared: %v", err)
	}
	// The host writes what the guest's stream says, and reopens on
	// rotation.
	fake.log.write(criLines(0, 3), false)
	waitFile(t, logPath, criLines(0, 3))
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := c.ReopenContainerLog(t.Context(), cid); err != nil {
		t.Fatal(err)
	}
	fake.log.write(criLines(3, 5), true)
	waitFile(t, logPath, criLines(3, 5))
	if err := c.ReopenContainerLog(t.Context(), "nobody"); !errdefs.IsNotFound(err) {
		t.Errorf("reopen of an unknown container: %v, want NotFound", err)
	}
	// Checkpoints of a VM pod's containers are refused, saying why.
	if err := c.CheckpointContainer(t.Context(), cid, filepath.Join(t.TempDir(), "img"), true); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("checkpoint of a VM container: %v, want FailedPrecondition", err)
	}
	if err := c.CheckpointContainer(t.Context(), "nobody", filepath.Join(t.TempDir(), "img"), true); !errdefs.IsNotFound(err) {
		t.Errorf("checkpoint of an unknown container: %v, want NotFound", err)
	}
	// The host side of a read-only volume is read-only too (the guest
	// cannot write through the share), and no share is suid or dev.
	if err := os.WriteFile(filepath.Join(hostDir, "m0", "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write into the read-only share: %v, want EROFS", err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 5 && strings.HasPrefix(f[4], hostDir) && (!strings.Contains(f[5], "nosuid") || !strings.Contains(f[5], "nodev")) {
			t.Errorf("share without nosuid,nodev: %s", l)
		}
	}
	if err := c.RemoveContainer(t.Context(), "pod1", cid); err != nil {
		t.Fatal(err)
	}
	if len(fake.removed) != 1 {
		t.Fatalf("guest removals %v", fake.removed)
	}
	mi, _ = os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), hostDir) {
		t.Fatal("mounts left after RemoveContainer")
	}
	if _, err := os.Stat(hostDir); !os.IsNotExist(err) {
		t.Fatalf("container dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "marker")); err != nil {
		t.Fatalf("the rootfs itself was touched: %v", err)
	}
	if _, err := os.Stat(logRecPath(dir, cid)); !os.IsNotExist(err) {
		t.Errorf("log position record left: %v", err)
	}
	if c.writers[cid] != nil {
		t.Error("log writer left running")
	}
}

// TestShareRefusesSymlinks: a guest that replaced a path of the shared dir
// by a symlink to a host directory gets no mount there: the share fails,
// and the host directory is left alone.
func TestShareRefusesSymlinks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts)")
	}
	tmp := t.TempDir()
	shared, outside, src := filepath.Join(tmp, "shared"), filepath.Join(tmp, "host"), filepath.Join(tmp, "src")
	for _, d := range []string{filepath.Join(shared, "c"), outside, src} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = unmountUnder(tmp, tmp) })
	// The container's dir, then its target, as symlinks to the host dir.
	if err := os.Symlink(outside, filepath.Join(shared, "c", "ctr1")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(shared, "c", "ctr2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(shared, "c", "ctr2", "m0")); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"c/ctr1/m0", "c/ctr2/m0", "../host", "/abs"} {
		if err := shareInto(shared, rel, src, false); err == nil {
			t.Errorf("share at %s through a symlink (or outside) succeeded", rel)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), outside) {
		t.Fatalf("a mount on the host dir %s:\n%s", outside, mi)
	}
	// The same path made by the host works, and unmounts.
	if err := shareInto(shared, "c/ctr3/m0", src, true); err != nil {
		t.Fatal(err)
	}
	if err := unmountUnder(tmp, filepath.Join(shared, "c", "ctr3")); err != nil {
		t.Fatal(err)
	}
}

// TestAdoptTrustsOnlyTheHostsRecord: after a restart, a container the
// guest reports but the host never made is not adopted.
func TestAdoptTrustsOnlyTheHostsRecord(t *testing.T) {
	tmp := t.TempDir()
	c := &Controller{cfg: Config{StateDir: tmp}, log: slog.Default(), pods: map[string]*vmPod{}, ctrs: map[string]string{}}
	dir := c.podDir("pod1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(filepath.Join(dir, "pod.json"), record{VMID: vmID("pod1"), Containers: []string{"mine"}}); err != nil {
		t.Fatal(err)
	}
	fake := &claimingPods{}
	c.pods["pod1"] = &vmPod{id: "pod1", dir: dir, guest: &guest{pods: native.WithClient(fake)}}
	st, err := c.adopt(t.Context(), "pod1", map[string]string{vmID("pod1"): "unused"})
	if err != nil {
		t.Fatal(err)
	}
	if st == nil || len(st.Containers) != 1 || st.Containers[0].ID != "mine" {
		t.Fatalf("adopted %+v", st)
	}
	if _, ok := c.ctrs["intruder"]; ok {
		t.Fatal("the guest's claimed container was adopted")
	}
	if _, err := c.ContainerStatus(t.Context(), "intruder"); !errdefs.IsNotFound(err) {
		t.Fatalf("status of the claimed container: %v, want NotFound", err)
	}
}

// claimingPods is a guest that reports a container the host did not make.
type claimingPods struct{ podsv0.PodServiceClient }

func (claimingPods) ListPods(context.Context, *podsv0.ListPodsRequest, ...grpc.CallOption) (*podsv0.ListPodsResponse, error) {
	return &podsv0.ListPodsResponse{Pods: []*podsv0.PodStatus{{
		Pod: &podsv0.Pod{Id: "pod1"}, Paths: &podsv0.AllocateResponse{PodId: "pod1"},
		Containers: []*podsv0.ContainerStatus{
			{Id: "mine", PodId: "pod1", State: podsv0.ContainerState_CONTAINER_STATE_RUNNING},
			{Id: "intruder", PodId: "pod1", State: podsv0.ContainerState_CONTAINER_STATE_RUNNING},
		},
	}}}, nil
}
