package vm

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// fakePods records the guest PodService calls the tests make.
type fakePods struct {
	podsv0.PodServiceClient
	started *podsv0.StartRequest
	removed []string
}

func (f *fakePods) Start(_ context.Context, req *podsv0.StartRequest, _ ...grpc.CallOption) (*podsv0.StartResponse, error) {
	f.started = req
	return &podsv0.StartResponse{ContainerId: req.GetContainer().GetId(), Pid: 42}, nil
}

func (f *fakePods) RemoveContainer(_ context.Context, req *podsv0.RemoveContainerRequest, _ ...grpc.CallOption) (*podsv0.RemoveContainerResponse, error) {
	f.removed = append(f.removed, req.GetContainerId())
	return &podsv0.RemoveContainerResponse{}, nil
}

// TestStartContainerSharesIntoGuest checks what the guest is asked to run:
// rootfs, log dir and volumes under the shared dir, the host pod's files
// and namespace paths dropped; RemoveContainer undoes the mounts.
func TestStartContainerSharesIntoGuest(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (bind mounts)")
	}
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	volume := filepath.Join(tmp, "volume")
	hostPod := filepath.Join(tmp, "hostpod")
	for _, d := range []string{rootfs, volume, hostPod} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "marker"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(hostPod, "hosts")
	if err := os.WriteFile(hosts, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fake := &fakePods{}
	c := &Controller{cfg: Config{StateDir: filepath.Join(tmp, "vmpods")}, log: slog.Default(), pods: map[string]*vmPod{}, ctrs: map[string]string{}}
	dir := c.podDir("pod1")
	c.pods["pod1"] = &vmPod{id: "pod1", dir: dir, rec: record{PodFiles: []string{hosts}}, guest: &guest{pods: fake}}
	t.Cleanup(func() { _ = unmountUnder(tmp) })

	sp := specs.Spec{
		Root: &specs.Root{Path: rootfs},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind"}},
			{Destination: "/data", Type: "bind", Source: volume, Options: []string{"rbind", "rw"}},
		},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/host/ns/net"}, {Type: specs.MountNamespace}}},
	}
	b, _ := json.Marshal(&sp)
	logPath := filepath.Join(tmp, "logs", "ctr", "0.log")
	cid := "0123456789abcdef0123"
	if _, err := c.StartContainer(t.Context(), "pod1", &podsv0.Container{Id: cid, OciSpec: b, RootfsPath: rootfs, LogPath: logPath}); err != nil {
		t.Fatal(err)
	}
	got := fake.started.GetContainer()
	guestDir := "/run/aurae/shared/c/0123456789abcdef"
	if got.GetRootfsPath() != guestDir+"/rootfs" || got.GetLogPath() != guestDir+"/log/0.log" || !got.GetMountPodFiles() {
		t.Fatalf("container %v", got)
	}
	var out specs.Spec
	if err := json.Unmarshal(got.GetOciSpec(), &out); err != nil {
		t.Fatal(err)
	}
	if out.Root.Path != guestDir+"/rootfs" || len(out.Mounts) != 2 || out.Mounts[1].Source != guestDir+"/m2" {
		t.Fatalf("spec root %v mounts %+v", out.Root, out.Mounts)
	}
	if len(out.Linux.Namespaces) != 1 || out.Linux.Namespaces[0].Type != specs.MountNamespace {
		t.Fatalf("namespaces %+v", out.Linux.Namespaces)
	}
	hostDir := filepath.Join(dir, "shared", "c", "0123456789abcdef")
	if _, err := os.Stat(filepath.Join(hostDir, "rootfs", "marker")); err != nil {
		t.Fatalf("rootfs not shared: %v", err)
	}
	if err := c.RemoveContainer(t.Context(), cid); err != nil {
		t.Fatal(err)
	}
	if len(fake.removed) != 1 {
		t.Fatalf("guest removals %v", fake.removed)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), hostDir) {
		t.Fatal("mounts left after RemoveContainer")
	}
	if _, err := os.Stat(hostDir); !os.IsNotExist(err) {
		t.Fatalf("container dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "marker")); err != nil {
		t.Fatalf("the rootfs itself was touched: %v", err)
	}
}
