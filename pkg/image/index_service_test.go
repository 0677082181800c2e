package image_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// otherClient is a containerd client of its own in the service's
// namespace: changes made through it are behind the service's back.
func otherClient(t *testing.T, e *env) (*containerd.Client, context.Context) {
	t.Helper()
	c, err := containerd.New(e.proc.Address())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, namespaces.WithNamespace(ctxT(t), e.svc.Namespace())
}

// keepContent holds target's blobs (manifest, config, layers) in a lease
// until the test ends.
func keepContent(t *testing.T, c *containerd.Client, ctx context.Context, target ocispec.Descriptor) {
	t.Helper()
	ls := c.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ls.Delete(context.WithoutCancel(ctx), l) })
	err = images.Walk(ctx, images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if err := ls.AddResource(ctx, l, leases.Resource{ID: d.Digest.String(), Type: "content"}); err != nil {
			return nil, err
		}
		return images.Children(ctx, c.ContentStore(), d)
	}), target)
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds; the index follows containerd's
// events, which arrive after the change that sent them.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tagsOf(imgs []*runtimeapi.Image, id string) []string {
	for _, img := range imgs {
		if img.GetId() == id {
			return img.GetRepoTags()
		}
	}
	return nil
}

// TestImageIndexFollowsContainerd: ImageStatus and ListImages answer from
// the service's index of image records, which sees at once what the
// service pulled or removed, follows what another client changed (by
// containerd's events), and is rebuilt by a new service (aurae-cri
// restarted while the records changed).
func TestImageIndexFollowsContainerd(t *testing.T) {
	e := newEnv(t, "")
	img := testimage.MustBusybox(t, testimage.Options{Env: []string{"INDEX=1"}})
	ref := e.reg.Push(t, "test/index:1", img)
	id := e.pull(t, ref, nil)
	eventually(t, "index ready", func() bool { return image.IndexReady(e.svc) })

	// The service's own pull and removal show at once.
	ref2 := e.reg.Push(t, "test/index2:1", testimage.MustBusybox(t, testimage.Options{Env: []string{"INDEX=2"}}))
	id2 := e.pull(t, ref2, nil)
	if got := e.status(t, ref2, false).GetImage().GetId(); got != id2 {
		t.Fatalf("status right after pull = %q, want %s", got, id2)
	}
	e.remove(t, ref2)
	if got := e.status(t, ref2, false).GetImage(); got != nil {
		t.Fatalf("status right after remove = %v, want none", got)
	}
	if got := ids(e.list(t, "")); !slices.Equal(got, []string{id}) {
		t.Fatalf("list after remove = %v, want [%s]", got, id)
	}

	// Another client tags the image and removes the tag.
	c, ctx := otherClient(t, e)
	rec, err := c.ImageService().Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	tag := e.reg.Ref("test/index-other:2")
	if _, err := c.ImageService().Create(ctx, images.Image{Name: tag, Target: rec.Target}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a tag made by another client listed", func() bool {
		return slices.Contains(tagsOf(e.list(t, ""), id), tag)
	})
	if got := e.status(t, tag, false).GetImage().GetId(); got != id {
		t.Errorf("status of the other client's tag = %q, want %s", got, id)
	}
	if err := c.ImageService().Delete(ctx, tag); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a tag removed by another client gone", func() bool {
		return e.status(t, tag, false).GetImage() == nil
	})
	if slices.Contains(tagsOf(e.list(t, ""), id), tag) {
		t.Error("the removed tag is still listed")
	}

	// The whole image removed behind the service's back. Its blobs are
	// kept by a lease of the test's, so that containerd's garbage
	// collection (which the removal schedules) cannot take them before
	// the image is made again below.
	keepContent(t, c, ctx, rec.Target)
	recs, err := c.ImageService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := c.ImageService().Delete(ctx, r.Name); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "an image removed by another client gone", func() bool {
		return len(e.list(t, "")) == 0
	})

	// A new service (aurae-cri restarted) sees what changed while none
	// ran: its first answers come from containerd, then from its index.
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImageService().Create(ctx, images.Image{Name: ref, Target: rec.Target}); err != nil {
		t.Fatal(err)
	}
	svc, err := image.New(context.Background(), image.Options{
		Address:           e.proc.Address(),
		RegistryConfigDir: e.reg.HostsDir(t),
		CallTimeout:       30 * time.Second,
		Logger:            testimage.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	e.svc = svc
	if got := e.status(t, ref, false).GetImage().GetId(); got != id {
		t.Fatalf("status after the restart = %q, want %s", got, id)
	}
	eventually(t, "index ready after the restart", func() bool { return image.IndexReady(svc) })
	if got := ids(e.list(t, "")); !slices.Equal(got, []string{id}) {
		t.Errorf("list from the rebuilt index = %v, want [%s]", got, id)
	}
}

// TestStatusAfterPullFromPulledMeta: what ImageStatus answers of an image
// just pulled (id, size, user) comes from what the pull read: a status
// that follows reads nothing more from containerd (here the image's config
// blob is gone behind the service's back, and the status is still whole).
func TestStatusAfterPullFromPulledMeta(t *testing.T) {
	e := newEnv(t, "")
	img := testimage.MustBusybox(t, testimage.Options{User: "app"})
	ref := e.reg.Push(t, "test/meta:1", img)
	id := e.pull(t, ref, nil)
	cfgDigest, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if id != cfgDigest.String() {
		t.Fatalf("pulled id %s, want the config digest %s", id, cfgDigest)
	}
	c, ctx := otherClient(t, e)
	if err := c.ContentStore().Delete(ctx, digest.Digest(cfgDigest.String())); err != nil {
		t.Fatalf("delete the config blob: %v", err)
	}
	st := e.status(t, ref, false)
	if st.GetImage() == nil {
		t.Fatal("ImageStatus after the pull: not found")
	}
	if st.Image.Id != id || st.Image.Username != "app" || st.Image.Size == 0 {
		t.Errorf("ImageStatus after the pull: id %s user %q size %d, want %s, app and the image's size", st.Image.Id, st.Image.Username, st.Image.Size, id)
	}
}

// TestPullWritesNoDistributionSourceLabels: a pull does not label the
// image's blobs with the registry they came from (a metadata commit per
// blob at every pull), and still labels what containerd's garbage
// collection follows: the manifest's references to its config and
// layers, the config's to the unpacked snapshot.
func TestPullWritesNoDistributionSourceLabels(t *testing.T) {
	e := newEnv(t, "")
	ref := e.reg.Push(t, "test/labels:1", testimage.MustBusybox(t, testimage.Options{}))
	e.pull(t, ref, nil)
	c, ctx := otherClient(t, e)
	rec, err := c.ImageService().Get(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var gcRefs, snapshotRefs int
	err = images.Walk(ctx, images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		info, err := c.ContentStore().Info(ctx, d.Digest)
		if err != nil {
			return nil, err
		}
		for k := range info.Labels {
			switch {
			case strings.HasPrefix(k, "containerd.io/distribution.source."):
				t.Errorf("blob %s (%s) labelled %s=%s", d.Digest, d.MediaType, k, info.Labels[k])
			case strings.HasPrefix(k, "containerd.io/gc.ref.content."):
				gcRefs++
			case strings.HasPrefix(k, "containerd.io/gc.ref.snapshot."):
				snapshotRefs++
			}
		}
		return images.Children(ctx, c.ContentStore(), d)
	}), rec.Target)
	if err != nil {
		t.Fatal(err)
	}
	if gcRefs < 2 || snapshotRefs != 1 {
		t.Errorf("%d content and %d snapshot references for the garbage collection, want the manifest's (config and layer) and the config's", gcRefs, snapshotRefs)
	}
}
