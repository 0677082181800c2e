package cri

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// freeAtExit is the fake controller with the native controller's promise:
// a container's rootfs is free once it exited.
type freeAtExit struct{ *fakeController }

func (freeAtExit) RootfsFreeAtExit() bool { return true }

// removalFixture is a Runtime on the fake controller with the native
// controller's promise (freeAtExit) and fake images, and one pod.
type removalFixture struct {
	*fixture
	images *image.Fake
	rt     *Runtime
	podID  string
}

func newRemovalFixture(t *testing.T) *removalFixture {
	t.Helper()
	f := &removalFixture{fixture: newFixture(t, false), images: image.NewFake(t.TempDir())}
	f.images.Add(image.Image{ID: "sha256:" + strings.Repeat("a", 64), RepoTags: []string{"example.com/app:1"}})
	f.rt = f.start(t, f.store)
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if err != nil {
		t.Fatal(err)
	}
	f.podID = pod.GetPodSandboxId()
	return f
}

// start makes and recovers a Runtime on st.
func (f *removalFixture) start(t *testing.T, st *sandbox.Store) *Runtime {
	t.Helper()
	rt, err := NewRuntime(Config{
		RootDir: f.dir, Controllers: map[string]controller.Controller{"": freeAtExit{f.ctrl}}, Images: f.images,
		Network: f.net, Store: st, MonitorInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	return rt
}

// create creates a container in the pod, with its rootfs snapshot, and
// unmounts its rootfs when the test ends.
func (f *removalFixture) create(t *testing.T, name string) string {
	t.Helper()
	resp, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{
		PodSandboxId: f.podID, Config: cdiContainer(name, nil, nil), SandboxConfig: podConfig("a")})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetContainerId()
	if _, ok := f.images.Rootfs(id); !ok {
		t.Fatalf("container %s has no rootfs snapshot", name)
	}
	// A failure must not leave the rootfs bind mounts in the temp dir.
	dir := f.rt.rootfsDir(id)
	t.Cleanup(func() { _, _ = unmountAll(dir) })
	return id
}

// recorded is container id's record in st, or nil.
func recorded(st *sandbox.Store, id string) *sandbox.Container {
	for _, c := range st.Containers() {
		if c.ID == id {
			return &c
		}
	}
	return nil
}

// TestRemoveContainerSnapshotOffPath: RemoveContainer of a native
// container returns without waiting for its rootfs snapshot's removal,
// the container gone from the CRI at once; the record goes from the disk
// after the snapshot. A snapshot removal that fails leaves the REMOVING
// record, and the next start finishes the removal.
func TestRemoveContainerSnapshotOffPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a container's rootfs needs root")
	}
	quickRetries(t)
	f := newRemovalFixture(t)
	rt, images := f.rt, f.images
	listed := func(rt *Runtime, id string) bool {
		resp, err := rt.ListContainers(t.Context(), &runtimeapi.ListContainersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.GetContainers() {
			if c.GetId() == id {
				return true
			}
		}
		return false
	}
	a, b := f.create(t, "a"), f.create(t, "b")

	// The snapshot's removal held: RemoveContainer returns all the same.
	gate := make(chan struct{})
	images.HoldRemoveRootfs(gate, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: a}); err != nil {
		t.Fatalf("RemoveContainer with the snapshot's removal held: %v", err)
	}
	if listed(rt, a) {
		t.Error("a removed container is still listed")
	}
	if _, ok := images.Rootfs(a); !ok {
		t.Fatal("the snapshot went before its removal was let go")
	}
	close(gate)
	f.store.Flush()
	if _, ok := images.Rootfs(a); ok {
		t.Error("the snapshot of a removed container is left")
	}

	// The snapshot's removal fails: the REMOVING record stays, and the
	// next start finishes the removal.
	images.HoldRemoveRootfs(nil, errFake)
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: b}); err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	// On disk: a is gone; b is left, REMOVING.
	st, err := sandbox.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	if c := recorded(st, a); c != nil {
		t.Errorf("record of a removed container left: %+v", c)
	}
	if c := recorded(st, b); c == nil || !c.Status.Removing {
		t.Fatalf("record of b after its snapshot's removal failed: %+v, want REMOVING", c)
	}
	images.HoldRemoveRootfs(nil, nil)
	rt = f.start(t, st)
	rt.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := images.Rootfs(b); ok {
		t.Error("the restart left the snapshot of b")
	}
	st, err = sandbox.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	if c := recorded(st, b); c != nil {
		t.Errorf("the restart left the record of b: %+v", c)
	}
}

// TestRemoveContainerOffPath: RemoveContainer of a native container
// returns once its REMOVING mark is on disk: its removal from the
// controller, then its snapshot and its record's file, go after. A
// controller removal that fails is tried again; one that keeps failing
// leaves the REMOVING record, and the next start finishes the removal.
func TestRemoveContainerOffPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a container's rootfs needs root")
	}
	quickRetries(t)
	f := newRemovalFixture(t)
	rt, images := f.rt, f.images
	inController := func(id string) bool {
		f.ctrl.mu.Lock()
		defer f.ctrl.mu.Unlock()
		_, created := f.ctrl.containers[id]
		_, prepared := f.ctrl.prepared[id]
		return created || prepared
	}
	a, b, c := f.create(t, "a"), f.create(t, "b"), f.create(t, "c")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	// The controller's removal held: RemoveContainer answers all the same.
	gate := make(chan struct{})
	f.ctrl.mu.Lock()
	f.ctrl.removeGate = gate
	f.ctrl.mu.Unlock()
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: a}); err != nil {
		t.Fatalf("RemoveContainer with the controller's removal held: %v", err)
	}
	if _, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: a}); err == nil {
		t.Error("a removed container still has a status")
	}
	if !inController(a) {
		close(gate)
		t.Fatal("the controller removed the container before its removal was let go")
	}
	if _, ok := images.Rootfs(a); !ok {
		t.Fatal("the snapshot went before the controller's removal")
	}
	close(gate)
	f.store.Flush()
	if inController(a) {
		t.Error("the controller still has the removed container")
	}
	if _, ok := images.Rootfs(a); ok {
		t.Error("the snapshot of a removed container is left")
	}

	// Two failures, then the removal goes through.
	f.ctrl.mu.Lock()
	f.ctrl.removeGate, f.ctrl.removeFails = nil, 2
	f.ctrl.mu.Unlock()
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: b}); err != nil {
		t.Fatal(err)
	}
	f.store.Flush()
	if inController(b) {
		t.Error("the controller still has a container whose removal failed twice, then worked")
	}

	// It keeps failing: the REMOVING record stays; the next start
	// finishes the removal.
	f.ctrl.mu.Lock()
	f.ctrl.removeFails = lazyRemovalTries
	f.ctrl.mu.Unlock()
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c}); err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := sandbox.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	left := recorded(st, c)
	if left == nil || !left.Status.Removing || !inController(c) {
		t.Fatalf("after the removal failed every time: record %+v, in the controller %v; want REMOVING and there", left, inController(c))
	}
	rt = f.start(t, st)
	rt.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if inController(c) {
		t.Error("the restart left the container in the controller")
	}
	if _, ok := images.Rootfs(c); ok {
		t.Error("the restart left the snapshot")
	}
}

// quickRetries makes the tries of a removal off RemoveContainer's path
// follow each other at once, for the test.
func quickRetries(t *testing.T) {
	old := lazyRemovalBackoff
	lazyRemovalBackoff = time.Millisecond
	t.Cleanup(func() { lazyRemovalBackoff = old })
}
