package image

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"
)

func TestFake(t *testing.T) {
	ctx := context.Background()
	f := NewFake("/var/lib/rootfs")
	img := f.Add(Image{ID: "sha256:" + hex64('a'), RepoTags: []string{"busybox"}, RepoDigests: []string{"busybox@sha256:" + hex64('b')}})
	for _, ref := range []string{"busybox", "docker.io/library/busybox:latest", "busybox@sha256:" + hex64('b'), img.ID, "aaaaaa"} {
		got, err := f.Resolve(ctx, ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("Resolve(%q) = %v, %v", ref, got.ID, err)
		}
	}
	if _, err := f.Resolve(ctx, "alpine"); !errdefs.IsNotFound(err) {
		t.Errorf("Resolve(alpine): %v", err)
	}
	other := f.Add(Image{RepoTags: []string{"alpine:3"}})

	ms, err := f.PrepareRootfs(ctx, "c1", "busybox")
	if err != nil || len(ms) != 1 || ms[0].Source != "/var/lib/rootfs" {
		t.Fatalf("PrepareRootfs = %v, %v", ms, err)
	}
	if _, err := f.PrepareRootfs(ctx, "c1", "busybox"); err != nil {
		t.Errorf("PrepareRootfs again: %v", err)
	}
	if _, err := f.PrepareRootfs(ctx, "c1", "alpine:3"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("PrepareRootfs on another image: %v", err)
	}
	if _, err := f.PrepareRootfs(ctx, "c/2", "busybox"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad id: %v", err)
	}
	if id, ok := f.Rootfs("c1"); !ok || id != img.ID {
		t.Errorf("Rootfs(c1) = %s, %v", id, ok)
	}
	if err := f.RemoveRootfs(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RootfsMounts(ctx, "c1"); !errdefs.IsNotFound(err) {
		t.Errorf("RootfsMounts after remove: %v", err)
	}
	if err := f.RemoveRootfs(ctx, "c1"); err != nil {
		t.Errorf("RemoveRootfs again: %v", err)
	}
	if _, err := f.PrepareRootfs(ctx, "c1", other.ID); err != nil {
		t.Errorf("PrepareRootfs on other image after remove: %v", err)
	}
}
