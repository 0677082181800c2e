package image_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestImageVolume: one read-only view per image, found again by a second
// prepare, listed, holding the image's layers after the image is removed,
// and gone (with every layer) once removed.
func TestImageVolume(t *testing.T) {
	e := newEnv(t, "")
	img := testimage.MustBusybox(t, testimage.Options{Files: map[string]string{"/data/x": "x\n"}})
	ref := e.reg.Push(t, "test/volume:1", img)
	id := e.pull(t, ref, nil)
	key := image.ImageVolumeKey(id)

	mounts, err := e.svc.PrepareImageVolume(ctxT(t), id)
	if err != nil {
		t.Fatalf("PrepareImageVolume: %v", err)
	}
	if len(mounts) != 1 || mounts[0].Type != "overlay" || slices.ContainsFunc(mounts[0].Options, func(o string) bool {
		return strings.HasPrefix(o, "upperdir=") || strings.HasPrefix(o, "workdir=")
	}) {
		t.Fatalf("mounts %+v, want one overlay of lower dirs only (a view)", mounts)
	}
	again, err := e.svc.PrepareImageVolume(ctxT(t), id)
	if err != nil || len(again) != 1 || !slices.Equal(again[0].Options, mounts[0].Options) {
		t.Fatalf("PrepareImageVolume again: %+v %v, want %+v", again, err, mounts)
	}
	keys, err := e.svc.ImageVolumes(ctxT(t))
	if err != nil || !slices.Equal(keys, []string{key}) {
		t.Fatalf("ImageVolumes: %q %v, want [%s]", keys, err, key)
	}
	if _, err := e.svc.PrepareImageVolume(ctxT(t), "not-an-id"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("PrepareImageVolume of a non-id: %v, want invalid argument", err)
	}
	e.remove(t, ref)
	if n := snapshotCount(t, e); n < 3 {
		t.Errorf("%d snapshots after removing the image, want the view and its two layers", n)
	}
	if err := e.svc.RemoveImageVolume(ctxT(t), key); err != nil {
		t.Fatalf("RemoveImageVolume: %v", err)
	}
	if err := e.svc.RemoveImageVolume(ctxT(t), key); err != nil {
		t.Fatalf("RemoveImageVolume again: %v", err)
	}
	if err := e.svc.RemoveImageVolume(ctxT(t), "aurae-cri/rootfs/x"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("RemoveImageVolume of another snapshot: %v, want invalid argument", err)
	}
	if keys, err := e.svc.ImageVolumes(ctxT(t)); err != nil || len(keys) != 0 {
		t.Errorf("ImageVolumes after removal: %q %v", keys, err)
	}
	if n := snapshotCount(t, e); n != 0 {
		t.Errorf("%d snapshots left after removing the image and its volume", n)
	}
}
