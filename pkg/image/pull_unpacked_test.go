package image_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// lineLog keeps the JSON lines a service logs.
type lineLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// pullSteps are the "pull image steps" lines logged so far.
func (l *lineLog) pullSteps(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "pull image steps" {
			out = append(out, rec)
		}
	}
	return out
}

// newLoggedEnv is newEnv whose service also logs, as JSON at debug level,
// into the returned lineLog.
func newLoggedEnv(t *testing.T) (*env, *lineLog) {
	t.Helper()
	lines := &lineLog{}
	logger := slog.New(slog.NewJSONHandler(io.MultiWriter(lines, testimage.LogWriter(t)), &slog.HandlerOptions{Level: slog.LevelDebug}))
	return newEnvLogging(t, "", logger), lines
}

// lastPull is the step line of the last pull, and the containerd calls it
// made by method.
func lastPull(t *testing.T, lines *lineLog) (path string, calls map[string]any) {
	t.Helper()
	steps := lines.pullSteps(t)
	if len(steps) == 0 {
		t.Fatal("no pull image steps logged")
	}
	last := steps[len(steps)-1]
	path, _ = last["path"].(string)
	calls, _ = last["remote_n"].(map[string]any)
	return path, calls
}

// imageSize is what containerd counts as an image's size: its manifest,
// config and layers.
func imageSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mf, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(m)) + mf.Config.Size
	for _, l := range mf.Layers {
		size += l.Size
	}
	return size
}

// TestPullOfUnpackedLayers: an image whose layers are unpacked already
// (another image shares them) is pulled without containerd's pull: its
// manifest and config are written with the labels containerd's garbage
// collection follows, its layers are neither fetched nor prepared, and the
// image is whole: its status, its rootfs, its removal and the collection
// of its content. A pull of the same image again goes the same way.
func TestPullOfUnpackedLayers(t *testing.T) {
	e, lines := newLoggedEnv(t)
	base := e.reg.Push(t, "test/base:1", testimage.MustBusybox(t, testimage.Options{}))
	e.pull(t, base, nil)
	if path, _ := lastPull(t, lines); path != "containerd" {
		t.Fatalf("the first pull of a layer went %q, want containerd's pull", path)
	}
	shared := testimage.MustBusybox(t, testimage.Options{User: "app", Env: []string{"SHARED=1"}})
	ref := e.reg.Push(t, "test/shared:1", shared)
	id := e.pull(t, ref, nil)
	path, calls := lastPull(t, lines)
	if path != "unpacked" {
		t.Fatalf("pull of an image whose layers are unpacked went %q, want unpacked", path)
	}
	for _, m := range []string{"Snapshots/Prepare", "Diff/Apply", "Content/Update", "Content/Read", "Introspection/Plugins"} {
		if calls[m] != nil {
			t.Errorf("the pull called %s %v times", m, calls[m])
		}
	}
	if id != testimage.ImageID(t, shared) {
		t.Fatalf("pulled id %s, want %s", id, testimage.ImageID(t, shared))
	}
	checkPulled(t, e, ref, shared)

	// Again: the blobs exist, the records are there.
	if got := e.pull(t, ref, nil); got != id {
		t.Fatalf("second pull id %s, want %s", got, id)
	}
	if path, _ := lastPull(t, lines); path != "unpacked" {
		t.Fatalf("second pull went %q, want unpacked", path)
	}
	checkPulled(t, e, ref, shared)

	// The image is whole after a garbage collection: it runs.
	collectGarbage(t, e)
	mounts, err := e.svc.PrepareRootfs(ctxT(t), "c-shared", ref)
	if err != nil {
		t.Fatalf("PrepareRootfs after the collection: %v", err)
	}
	checkBusybox(t, mounts)
	if err := e.svc.RemoveRootfs(ctxT(t), "c-shared"); err != nil {
		t.Fatal(err)
	}

	// Removed, its blobs go with the collection; the base's stay.
	mf, err := shared.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	e.remove(t, ref)
	collectGarbage(t, e)
	c, ctx := otherClient(t, e)
	if _, err := c.ContentStore().Info(ctx, digest.Digest(mf.Config.Digest.String())); !errdefs.IsNotFound(err) {
		t.Errorf("config of the removed image after a collection: %v, want not found", err)
	}
	if st := e.status(t, base, false); st.GetImage() == nil {
		t.Error("the base image is gone with the removal of the one sharing its layer")
	}
	e.remove(t, base)
	collectGarbage(t, e)
	if n := snapshotCount(t, e); n != 0 {
		t.Errorf("%d snapshots after removing both images", n)
	}
}

// checkPulled checks what a pull of img as ref left: its status (id,
// user, size), its records, its blobs labelled for the garbage collection
// and no lease.
func checkPulled(t *testing.T, e *env, ref string, img v1.Image) {
	t.Helper()
	st := e.status(t, ref, false).GetImage()
	if st == nil {
		t.Fatalf("ImageStatus(%s): not found", ref)
	}
	if st.Id != testimage.ImageID(t, img) || st.Username != "app" || st.Size != uint64(imageSize(t, img)) {
		t.Errorf("status id %s user %q size %d, want %s, app, %d", st.Id, st.Username, st.Size, testimage.ImageID(t, img), imageSize(t, img))
	}
	digestRef := testimage.DigestRef(t, ref, img)
	if len(st.RepoTags) != 1 || st.RepoTags[0] != ref || len(st.RepoDigests) != 1 || st.RepoDigests[0] != digestRef {
		t.Errorf("status tags %v digests %v, want [%s] [%s]", st.RepoTags, st.RepoDigests, ref, digestRef)
	}
	c, ctx := otherClient(t, e)
	// The pull's lease goes off its path.
	eventually(t, "no lease left after the pull", func() bool {
		ls, err := c.LeasesService().List(ctx)
		return err == nil && len(ls) == 0
	})
	rec, err := c.ImageService().Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	gc := blobLabels(t, c.ContentStore(), ctx, rec.Target)
	mf, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	m, cfg := gc[rec.Target.Digest], gc[digest.Digest(mf.Config.Digest.String())]
	if m["containerd.io/gc.ref.content.config"] != mf.Config.Digest.String() || m["containerd.io/gc.ref.content.l.0"] != mf.Layers[0].Digest.String() {
		t.Errorf("manifest labels %v, want references to the config and the layer", m)
	}
	if len(cfg) != 1 || cfg["containerd.io/gc.ref.snapshot.overlayfs"] == "" {
		t.Errorf("config labels %v, want the reference to the snapshot alone", cfg)
	}
}

// blobLabels are the labels of target and the blobs under it that are in
// the content store.
func blobLabels(t *testing.T, cs content.Store, ctx context.Context, target ocispec.Descriptor) map[digest.Digest]map[string]string {
	t.Helper()
	out := map[digest.Digest]map[string]string{}
	var walk func(d ocispec.Descriptor)
	walk = func(d ocispec.Descriptor) {
		info, err := cs.Info(ctx, d.Digest)
		if errdefs.IsNotFound(err) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		out[d.Digest] = info.Labels
		for k := range info.Labels {
			if strings.HasPrefix(k, "containerd.io/distribution.source.") {
				t.Errorf("blob %s labelled %s", d.Digest, k)
			}
		}
		if !strings.Contains(d.MediaType, "manifest") && !strings.Contains(d.MediaType, "index") {
			return
		}
		data, err := content.ReadBlob(ctx, cs, d)
		if err != nil {
			t.Fatal(err)
		}
		var parent struct {
			Config    *ocispec.Descriptor  `json:"config"`
			Layers    []ocispec.Descriptor `json:"layers"`
			Manifests []ocispec.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(data, &parent); err != nil {
			t.Fatal(err)
		}
		if parent.Config != nil {
			walk(*parent.Config)
		}
		for _, c := range append(parent.Layers, parent.Manifests...) {
			walk(c)
		}
	}
	walk(target)
	return out
}

// TestPullOfUnpackedLayersFromIndex: an index whose manifest for this
// platform has unpacked layers is pulled the same way: the record points
// at the index, the index names all its manifests for the garbage
// collection, the image is the platform's.
func TestPullOfUnpackedLayersFromIndex(t *testing.T) {
	e, lines := newLoggedEnv(t)
	e.pull(t, e.reg.Push(t, "test/base:1", testimage.MustBusybox(t, testimage.Options{})), nil)
	amd := testimage.MustBusybox(t, testimage.Options{User: "app", Env: []string{"PLATFORM=amd64"}})
	other := testimage.MustBusybox(t, testimage.Options{User: "other", Env: []string{"PLATFORM=other"}})
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	), types.OCIImageIndex)
	ref := e.reg.PushIndex(t, "test/multi:1", idx)
	id := e.pull(t, ref, nil)
	if path, _ := lastPull(t, lines); path != "unpacked" {
		t.Fatalf("pull of an index went %q, want unpacked", path)
	}
	if id != testimage.ImageID(t, amd) {
		t.Fatalf("pulled id %s, want the amd64 image's %s", id, testimage.ImageID(t, amd))
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	c, ctx := otherClient(t, e)
	rec, err := c.ImageService().Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Target.Digest.String() != idxDigest.String() {
		t.Fatalf("record target %s, want the index %s", rec.Target.Digest, idxDigest)
	}
	labels := blobLabels(t, c.ContentStore(), ctx, rec.Target)[rec.Target.Digest]
	for i, img := range []v1.Image{other, amd} {
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if k := "containerd.io/gc.ref.content.m." + string(rune('0'+i)); labels[k] != d.String() {
			t.Errorf("index label %s = %q, want %s", k, labels[k], d)
		}
	}
	st := e.status(t, ref, false).GetImage()
	if st == nil || st.Username != "app" {
		t.Fatalf("status of the index: %v, want the amd64 image (user app)", st)
	}
	collectGarbage(t, e)
	mounts, err := e.svc.PrepareRootfs(ctxT(t), "c-multi", ref)
	if err != nil {
		t.Fatalf("PrepareRootfs after the collection: %v", err)
	}
	checkBusybox(t, mounts)
	if err := e.svc.RemoveRootfs(ctxT(t), "c-multi"); err != nil {
		t.Fatal(err)
	}
}

// checkBusybox mounts a rootfs and finds busybox in it.
func checkBusybox(t *testing.T, ms []image.Mount) {
	t.Helper()
	withRootfs(t, ms, func(target string) {
		if _, err := os.Stat(filepath.Join(target, "bin/busybox")); err != nil {
			t.Errorf("busybox in the rootfs: %v", err)
		}
	})
}
