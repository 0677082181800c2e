package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/daemon"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// startImageAuraed starts an auraed that pulls images from a registry of
// the test's own through a containerd it starts itself; what is left
// mounted under its state dir is unmounted once it stopped.
func startImageAuraed(t *testing.T, args ...string) (*Auraed, *testimage.Registry) {
	t.Helper()
	requireRoot(t)
	reg := testimage.StartRegistry(t)
	var a *Auraed
	t.Cleanup(func() { // after auraed's own cleanup (stop)
		if a != nil {
			if err := testimage.UnmountUnder(a.StateDir); err != nil {
				t.Errorf("unmount under the state dir: %v", err)
			}
		}
	})
	a = startAuraed(t, append([]string{
		"--containerd-address", filepath.Join(t.TempDir(), "no-containerd.sock"),
		"--registry-config-dir", reg.HostsDir(t),
	}, args...)...)
	return a, reg
}

// TestLegacyRunCell runs a cell of an image from a registry through
// runtime.Core/RunCell: the container's output in its log and its exit
// code; its rootfs snapshot, lease, mount and cgroup while the pod lives,
// none of them after the pod is freed; refusals name the field and leave
// nothing.
func TestLegacyRunCell(t *testing.T) {
	a, reg := startImageAuraed(t)
	ctx := testContext(t)
	ref := reg.Push(t, "e2e/cell:1", testimage.MustBusybox(t, testimage.Options{
		Cmd: []string{"sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 3"},
	}))
	core := runtimeapi.NewCoreClient(a.Client().Conn)
	pods := a.Client().Pods

	st, err := core.RunCell(ctx, &runtimeapi.Cell{
		Meta:       &metaapi.AuraeMeta{Name: "cell1"},
		Containers: []*runtimeapi.Container{{Meta: &metaapi.AuraeMeta{Name: "app"}, Image: ref}},
	})
	if err != nil {
		t.Fatalf("RunCell: %v", err)
	}
	freed := false
	t.Cleanup(func() {
		if !freed {
			_, _ = pods.Free(context.Background(), &podsv0.FreeRequest{PodId: "cell1"})
		}
	})
	if st.GetStatus() != metaapi.Status_STATUS_ACTIVE || len(st.GetContainerStatuses()) != 1 {
		t.Fatalf("RunCell = %v", st)
	}
	cs := st.GetContainerStatuses()[0]
	logPath := filepath.Join(a.StateDir, "runcell", "cell1", "app.log")
	if cs.GetProc().GetPid() <= 0 || cs.GetMeta().GetName() != "app" || cs.GetMeta().GetMessage() != "id cell1.app, log "+logPath {
		t.Fatalf("container status %v", cs)
	}

	// The container ran to its end: its output is in its log, its exit
	// code in the PodService.
	var ctr *podsv0.ContainerStatus
	for {
		resp, err := pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "cell1.app"})
		if err != nil {
			t.Fatal(err)
		}
		if ctr = resp.GetStatus(); ctr.GetState() == podsv0.ContainerState_CONTAINER_STATE_EXITED {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("container did not exit: %v", ctr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ctr.GetExitCode() != 3 {
		t.Fatalf("exit code %d, want 3", ctr.GetExitCode())
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), " stdout F hello from cell1\n") || !strings.Contains(string(b), " stderr F oops\n") {
		t.Fatalf("log:\n%s", b)
	}

	// What the cell holds while its pod lives.
	cg := filepath.Dir(ctr.GetCgroupPath())
	ctrd := imageClient(t, a)
	rootfs := filepath.Join(a.StateDir, "runcell", "cell1", "app", "rootfs")
	checkCellHolds := func(want bool) {
		t.Helper()
		if got := cgroupExists(cg); got != want {
			t.Errorf("pod cgroup %s exists: %v, want %v", cg, got, want)
		}
		if got := mounted(t, rootfs); got != want {
			t.Errorf("rootfs %s mounted: %v, want %v", rootfs, got, want)
		}
		nctx := namespaces.WithNamespace(ctx, daemon.ImageNamespace)
		_, err := ctrd.SnapshotService(image.DefaultSnapshotter).Stat(nctx, image.RootfsKey("cell1.app"))
		if got := err == nil; got != want || (err != nil && !errdefs.IsNotFound(err)) {
			t.Errorf("rootfs snapshot exists: %v (%v), want %v", got, err, want)
		}
		ls, err := ctrd.LeasesService().List(nctx, "id=="+image.RootfsLease("cell1.app"))
		if err != nil || (len(ls) == 1) != want {
			t.Errorf("rootfs leases %v (%v), want one: %v", ls, err, want)
		}
	}
	checkCellHolds(true)

	// The same cell again, and requests that name what is wrong.
	if _, err := core.RunCell(ctx, &runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "cell1"}, Containers: []*runtimeapi.Container{{Image: ref}}}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("RunCell of a running cell = %v, want AlreadyExists", err)
	}
	for _, tc := range []struct {
		cell *runtimeapi.Cell
		code codes.Code
		says string
	}{
		{&runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "cell2"}}, codes.InvalidArgument, "cell.containers is empty"},
		{&runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "../x"}, Containers: []*runtimeapi.Container{{Image: ref}}}, codes.InvalidArgument, "cell.meta.name"},
		{&runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "cell2"}, Containers: []*runtimeapi.Container{{}}}, codes.InvalidArgument, "cell.containers[0].image is empty"},
		{&runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "cell2"}, Containers: []*runtimeapi.Container{{Meta: &metaapi.AuraeMeta{Name: "a/b"}, Image: ref}}}, codes.InvalidArgument, "cell.containers[0].meta.name"},
		{&runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "cell2"}, Containers: []*runtimeapi.Container{{Image: ref}, {Image: reg.Ref("e2e/missing:1")}}}, codes.NotFound, "cell.containers[1].image"},
	} {
		_, err := core.RunCell(ctx, tc.cell)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("RunCell(%v) = %v, want %v saying %q", tc.cell, err, tc.code, tc.says)
		}
	}
	if _, err := os.Stat(filepath.Join(a.StateDir, "runcell", "cell2")); !os.IsNotExist(err) {
		t.Errorf("a refused cell left its dir: %v", err)
	}
	list, err := pods.ListPods(ctx, &podsv0.ListPodsRequest{})
	if err != nil || len(list.GetPods()) != 1 {
		t.Errorf("pods after the refusals: %v, %v", list, err)
	}

	// Freeing the pod releases the rest.
	if _, err := pods.Free(ctx, &podsv0.FreeRequest{PodId: "cell1"}); err != nil {
		t.Fatal(err)
	}
	freed = true
	checkCellHolds(false)
	if _, err := os.Stat(filepath.Join(a.StateDir, "runcell", "cell1")); !os.IsNotExist(err) {
		t.Errorf("the cell's dir is left: %v", err)
	}
}

// imageClient is a containerd client of the containerd auraed started.
func imageClient(t *testing.T, a *Auraed) *containerd.Client {
	t.Helper()
	c, err := containerd.New(filepath.Join(a.StateDir, "containerd", "containerd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// mounted tells whether something is mounted at dir.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	return len(ms) > 0
}

// cgroupExists tells whether the cgroup (below the hierarchies' roots)
// exists in the memory hierarchy (v1) or the unified one.
func cgroupExists(path string) bool {
	for _, root := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, path, "cgroup.procs")); err == nil {
			return true
		}
	}
	return false
}
