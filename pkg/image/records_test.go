package image_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// recordNames are the names of the image records in the service's
// namespace.
func recordNames(t *testing.T, e *env) []string {
	t.Helper()
	c, ctx := otherClient(t, e)
	recs, err := c.ImageService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
	}
	slices.Sort(names)
	return names
}

// TestPullRecordsTheNameAlone: a pull by tag writes one record, the tag's
// (a metadata commit, where containerd's CRI plugin writes three); the
// image is still found, listed and removed by its repo digest and its id.
// When the tag moves to another image, the image it named keeps records
// by id and repo digest, and stays listed without the tag.
func TestPullRecordsTheNameAlone(t *testing.T) {
	for _, through := range []string{"containerd", "unpacked"} {
		t.Run(through, func(t *testing.T) {
			e := newEnv(t, "")
			if through == "unpacked" {
				e.pull(t, e.reg.Push(t, "test/base:1", testimage.MustBusybox(t, testimage.Options{})), nil)
			}
			first := testimage.MustBusybox(t, testimage.Options{Env: []string{"FIRST=1"}})
			ref := e.reg.Push(t, "test/moving:1", first)
			id := e.pull(t, ref, nil)
			if names := recordNames(t, e); !slices.Contains(names, ref) || slices.Contains(names, id) || slices.Contains(names, testimage.DigestRef(t, ref, first)) {
				t.Fatalf("records after a pull by tag: %v, want the tag's alone", names)
			}
			digestRef := testimage.DigestRef(t, ref, first)
			for _, spec := range []string{ref, digestRef, id} {
				st := e.status(t, spec, false).GetImage()
				if st == nil || st.Id != id || !slices.Equal(st.RepoDigests, []string{digestRef}) || !slices.Equal(st.RepoTags, []string{ref}) {
					t.Fatalf("ImageStatus(%s) = %v, want id %s, tag %s, digest %s", spec, st, id, ref, digestRef)
				}
			}
			if got := ids(e.list(t, digestRef)); !slices.Equal(got, []string{id}) {
				t.Errorf("list filtered by the repo digest: %v", got)
			}

			// The tag moves.
			second := testimage.MustBusybox(t, testimage.Options{Env: []string{"SECOND=1"}})
			e.reg.Push(t, "test/moving:1", second)
			id2 := e.pull(t, ref, nil)
			if id2 == id {
				t.Fatal("the tag did not move")
			}
			st := e.status(t, id, false).GetImage()
			if st == nil || len(st.RepoTags) != 0 || !slices.Equal(st.RepoDigests, []string{digestRef}) {
				t.Fatalf("the image the tag left: %v, want it listed with no tag and its repo digest %s", st, digestRef)
			}
			collectGarbage(t, e)
			if st := e.status(t, digestRef, false).GetImage(); st == nil || st.Id != id {
				t.Fatalf("the image the tag left, after a collection: %v", st)
			}
			if st := e.status(t, ref, false).GetImage(); st == nil || st.Id != id2 {
				t.Fatalf("the tag after it moved: %v, want %s", st, id2)
			}
			e.remove(t, digestRef)
			e.remove(t, ref)
			if names := recordNames(t, e); slices.ContainsFunc(names, func(n string) bool { return n != "" && (n == ref || n == id || n == id2 || n == digestRef) }) {
				t.Fatalf("records after removing both: %v", names)
			}
		})
	}
}

// TestRemoveRightAfterPullCollects: a pull's lease is deleted off the
// pull's path; a removal that follows at once still collects what the
// pull wrote (it waits for that deletion before its collection), with no
// collection of the test's own.
func TestRemoveRightAfterPullCollects(t *testing.T) {
	e := newEnv(t, "")
	e.pull(t, e.reg.Push(t, "test/base:1", testimage.MustBusybox(t, testimage.Options{})), nil)
	image.DelayLeaseDrops(e.svc, 100*time.Millisecond)
	c, ctx := otherClient(t, e)
	for i := range 3 {
		img := testimage.MustBusybox(t, testimage.Options{Env: []string{fmt.Sprintf("ROUND=%d", i)}})
		ref := e.reg.Push(t, "test/quick:1", img)
		e.pull(t, ref, nil)
		e.remove(t, ref)
		if _, err := c.ContentStore().Info(ctx, digest.Digest(testimage.ImageID(t, img))); !errdefs.IsNotFound(err) {
			t.Fatalf("round %d: the config of an image removed right after its pull: %v, want it collected", i, err)
		}
	}
}
