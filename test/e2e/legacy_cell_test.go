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
	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
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
		info, err := ctrd.SnapshotService(image.DefaultSnapshotter).Stat(nctx, image.RootfsKey("cell1.app"))
		if got := err == nil; got != want || (err != nil && !errdefs.IsNotFound(err)) {
			t.Errorf("rootfs snapshot exists: %v (%v), want %v", got, err, want)
		}
		if _, root := info.Labels["containerd.io/gc.root"]; err == nil && !root {
			t.Errorf("rootfs snapshot labels %v: not a root of containerd's garbage collection", info.Labels)
		}
		ls, err := ctrd.LeasesService().List(nctx, "id=="+image.RootfsLease("cell1.app"))
		if err != nil || len(ls) != 0 {
			t.Errorf("rootfs leases %v (%v), want none: the snapshot is a GC root", ls, err)
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

// TestLegacyRunPodRefusals: without a guest image RunPod answers
// FailedPrecondition naming what is missing; a bad request names its
// field; neither leaves anything.
func TestLegacyRunPodRefusals(t *testing.T) {
	empty := t.TempDir()
	a, reg := startImageAuraed(t, "--vm-image-dir", empty)
	ctx := testContext(t)
	core := runtimeapi.NewCoreClient(a.Client().Conn)
	cell := &runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: "web"}, Containers: []*runtimeapi.Container{{Image: reg.Ref("e2e/cell:1")}}}
	_, err := core.RunPod(ctx, &runtimeapi.Pod{Meta: &metaapi.AuraeMeta{Name: "vmpod"}, Cells: []*runtimeapi.Cell{cell}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), empty+"/vmlinux is missing") {
		t.Fatalf("RunPod without a guest image = %v, want FailedPrecondition naming %s/vmlinux", err, empty)
	}
	for _, tc := range []struct {
		pod  *runtimeapi.Pod
		says string
	}{
		{&runtimeapi.Pod{Meta: &metaapi.AuraeMeta{Name: "vmpod"}}, "pod.cells is empty"},
		{&runtimeapi.Pod{Cells: []*runtimeapi.Cell{cell}}, "pod.meta.name"},
		{&runtimeapi.Pod{Meta: &metaapi.AuraeMeta{Name: "vmpod"}, Cells: []*runtimeapi.Cell{cell, cell}}, "pod.cells[1].meta.name \"web\" given twice"},
		{&runtimeapi.Pod{Meta: &metaapi.AuraeMeta{Name: "vmpod"}, Cells: []*runtimeapi.Cell{{Meta: &metaapi.AuraeMeta{Name: "web"}}}}, "pod.cells[0]: cell \"web\": cell.containers is empty"},
	} {
		if _, err := core.RunPod(ctx, tc.pod); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("RunPod(%v) = %v, want InvalidArgument saying %q", tc.pod, err, tc.says)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(a.StateDir, "runcell")); len(ents) != 0 {
		t.Errorf("records left: %v %v", ents, err)
	}
}

// TestLegacyRunPod boots a VM through runtime.Core/RunPod and runs a
// cell's container in it from an image the host pulled: its output
// reaches its log on the host; freeing the pod removes the VM, the
// rootfs mount, snapshot and lease and the records.
func TestLegacyRunPod(t *testing.T) {
	requireVMImage(t)
	a, reg := startImageAuraed(t, "--vm-image-dir", vmImageDir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref := reg.Push(t, "e2e/cell:1", testimage.MustBusybox(t, testimage.Options{
		Cmd: []string{"sh", "-c", "echo hello from $(hostname); exec sleep 600"},
	}))
	core := runtimeapi.NewCoreClient(a.Client().Conn)
	pods := a.Client().Pods
	freed := false
	t.Cleanup(func() {
		if !freed {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _ = pods.Free(ctx, &podsv0.FreeRequest{PodId: "vmpod"})
		}
	})
	resp, err := core.RunPod(ctx, &runtimeapi.Pod{
		Meta: &metaapi.AuraeMeta{Name: "vmpod"},
		Cells: []*runtimeapi.Cell{{
			Meta:       &metaapi.AuraeMeta{Name: "web"},
			Containers: []*runtimeapi.Container{{Meta: &metaapi.AuraeMeta{Name: "app"}, Image: ref}},
		}},
	})
	if err != nil {
		t.Fatalf("RunPod: %v", err)
	}
	logPath := filepath.Join(a.StateDir, "runcell", "vmpod", "web.app.log")
	cs := resp.GetCellStatus()
	if resp.GetStatus() != metaapi.Status_STATUS_ACTIVE || resp.GetSpawnResponse().GetVmId() != "pod-vmpod" ||
		cs.GetMeta().GetName() != "web" || len(cs.GetContainerStatuses()) != 1 ||
		cs.GetContainerStatuses()[0].GetMeta().GetMessage() != "id vmpod.web.app, log "+logPath {
		t.Fatalf("RunPod = %v", resp)
	}
	vms, err := a.Client().Vms.List(ctx, &vmsv0.VmServiceListRequest{})
	if err != nil || len(vms.GetMachines()) != 1 || vms.GetMachines()[0].GetId() != "pod-vmpod" {
		t.Fatalf("VMs: %v %v", vms, err)
	}
	// The guest's output reaches the host's log (a writer follows it).
	logCtx, logCancel := context.WithTimeout(ctx, time.Minute)
	defer logCancel()
	for {
		b, _ := os.ReadFile(logPath)
		// The guest's containers have the VM's hostname (its id).
		if strings.Contains(string(b), " stdout F hello from pod-vmpod\n") {
			break
		}
		if logCtx.Err() != nil {
			t.Fatalf("log %s:\n%s", logPath, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rootfs := filepath.Join(a.StateDir, "runcell", "vmpod", "web.app", "rootfs")
	if !mounted(t, rootfs) {
		t.Errorf("rootfs %s not mounted", rootfs)
	}
	ctrd := imageClient(t, a)
	nctx := namespaces.WithNamespace(ctx, daemon.ImageNamespace)
	if _, err := ctrd.SnapshotService(image.DefaultSnapshotter).Stat(nctx, image.RootfsKey("vmpod.web.app")); err != nil {
		t.Errorf("rootfs snapshot: %v", err)
	}

	if _, err := pods.Free(ctx, &podsv0.FreeRequest{PodId: "vmpod"}); err != nil {
		t.Fatal(err)
	}
	freed = true
	if vms, err := a.Client().Vms.List(ctx, &vmsv0.VmServiceListRequest{}); err != nil || len(vms.GetMachines()) != 0 {
		t.Errorf("VMs after Free: %v %v", vms, err)
	}
	if mounted(t, rootfs) {
		t.Errorf("rootfs %s still mounted", rootfs)
	}
	if _, err := ctrd.SnapshotService(image.DefaultSnapshotter).Stat(nctx, image.RootfsKey("vmpod.web.app")); !errdefs.IsNotFound(err) {
		t.Errorf("rootfs snapshot after Free: %v", err)
	}
	if ls, err := ctrd.LeasesService().List(nctx, "id=="+image.RootfsLease("vmpod.web.app")); err != nil || len(ls) != 0 {
		t.Errorf("leases after Free: %v %v", ls, err)
	}
	for _, d := range []string{"runcell/vmpod", "runpod/vmpod"} {
		if _, err := os.Stat(filepath.Join(a.StateDir, d)); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", d, err)
		}
	}
	if pids := qemuPids(a.StateDir); len(pids) != 0 {
		t.Errorf("QEMU still runs: %v", pids)
	}
}

// TestLegacyRunCellKill9: RunCell's cells survive a kill -9 of auraed; a
// cell whose record says its creation was cut short (as when auraed dies
// between starting its containers and recording it running) is undone at
// the next start: its pod freed, its mount, snapshot and lease removed.
func TestLegacyRunCellKill9(t *testing.T) {
	a, reg := startImageAuraed(t)
	ctx := testContext(t)
	ref := reg.Push(t, "e2e/sleep:1", testimage.MustBusybox(t, testimage.Options{Cmd: []string{"sleep", "600"}}))
	core := runtimeapi.NewCoreClient(a.Client().Conn)
	for _, name := range []string{"keep", "cut"} {
		if _, err := core.RunCell(ctx, &runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: name}, Containers: []*runtimeapi.Container{{Meta: &metaapi.AuraeMeta{Name: "app"}, Image: ref}}}); err != nil {
			t.Fatalf("RunCell %s: %v", name, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _ = a.Client().Pods.Free(ctx, &podsv0.FreeRequest{PodId: name})
		})
	}
	before, err := a.Client().Pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "keep.app"})
	if err != nil {
		t.Fatal(err)
	}
	a.Kill9()
	recPath := filepath.Join(a.StateDir, "runcell", "cut", "record.json")
	b, err := os.ReadFile(recPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recPath, []byte(strings.Replace(string(b), `"state":"running"`, `"state":"creating"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start(t)

	after, err := a.Client().Pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "keep.app"})
	if err != nil || after.GetStatus().GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING || after.GetStatus().GetPid() != before.GetStatus().GetPid() {
		t.Fatalf("keep.app after the restart: %v, %v (before: %v)", after, err, before)
	}
	if _, err := a.Client().Pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "cut.app"}); status.Code(err) != codes.NotFound {
		t.Fatalf("cut.app after the restart: %v, want NotFound", err)
	}
	ctrd := imageClient(t, a)
	nctx := namespaces.WithNamespace(ctx, daemon.ImageNamespace)
	if _, err := ctrd.SnapshotService(image.DefaultSnapshotter).Stat(nctx, image.RootfsKey("cut.app")); !errdefs.IsNotFound(err) {
		t.Errorf("cut.app's snapshot: %v, want gone", err)
	}
	if ls, err := ctrd.LeasesService().List(nctx, "id=="+image.RootfsLease("cut.app")); err != nil || len(ls) != 0 {
		t.Errorf("cut.app's lease: %v %v", ls, err)
	}
	if mounted(t, filepath.Join(a.StateDir, "runcell", "cut", "app", "rootfs")) {
		t.Error("cut.app's rootfs is still mounted")
	}
	if _, err := os.Stat(filepath.Join(a.StateDir, "runcell", "cut")); !os.IsNotExist(err) {
		t.Errorf("cut's dir: %v", err)
	}
	if _, err := a.Client().Pods.Free(ctx, &podsv0.FreeRequest{PodId: "keep"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrd.SnapshotService(image.DefaultSnapshotter).Stat(nctx, image.RootfsKey("keep.app")); !errdefs.IsNotFound(err) {
		t.Errorf("keep.app's snapshot after Free: %v", err)
	}
}
