package image

import (
	"maps"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func rec(name, target string) images.Image {
	return images.Image{Name: name, Target: ocispec.Descriptor{Digest: digest.FromString(target)}}
}

func target(t *testing.T, x *index, name string) (string, bool) {
	t.Helper()
	r, found, ok := x.record(name)
	if !ok {
		t.Fatalf("index not valid")
	}
	if !found {
		return "", false
	}
	return r.Target.Digest.String(), true
}

func TestIndexNotValidUntilListed(t *testing.T) {
	x := newIndex()
	x.put(x.begin(), rec("a", "1"))
	if _, _, ok := x.record("a"); ok {
		t.Fatal("index valid before a full listing")
	}
	if _, _, _, ok := x.records(); ok {
		t.Fatal("records valid before a full listing")
	}
	x.reset(x.begin(), []images.Image{rec("b", "2")})
	if _, found := target(t, x, "a"); found {
		t.Error("a record the listing lacks is still there")
	}
	if d, found := target(t, x, "b"); !found || d != digest.FromString("2").String() {
		t.Errorf("b = %q, %v", d, found)
	}
	x.invalidate()
	if _, _, ok := x.record("b"); ok {
		t.Error("index valid after invalidate (the event stream failed)")
	}
}

func TestIndexOlderReadNeverWins(t *testing.T) {
	x := newIndex()
	x.reset(x.begin(), nil)
	// An event's read begins, then the record changes and the service's
	// own write applies it; the event's (older) read lands last.
	older := x.begin()
	x.put(x.begin(), rec("a", "new"))
	x.put(older, rec("a", "old"))
	if d, _ := target(t, x, "a"); d != digest.FromString("new").String() {
		t.Errorf("a = %s, want the newer target", d)
	}
	// A deletion read earlier does not remove a record put later.
	older = x.begin()
	x.put(x.begin(), rec("b", "1"))
	x.drop(older, "b")
	if _, found := target(t, x, "b"); !found {
		t.Error("an older read of b's absence dropped it")
	}
	// A later deletion does.
	x.drop(x.begin(), "b")
	if _, found := target(t, x, "b"); found {
		t.Error("b not dropped")
	}
	// A listing begun before a write does not undo it, in either direction.
	list := x.begin()
	x.put(x.begin(), rec("c", "1"))
	x.drop(x.begin(), "a")
	x.reset(list, []images.Image{rec("a", "listed")})
	if _, found := target(t, x, "c"); !found {
		t.Error("an older listing dropped c, put after it began")
	}
	if _, found := target(t, x, "a"); found {
		t.Error("an older listing brought back a, dropped after it began")
	}
}

func TestIndexKeepsBuiltImagesOfItsGeneration(t *testing.T) {
	x := newIndex()
	x.reset(x.begin(), []images.Image{rec("a", "1")})
	recs, gen, built, ok := x.records()
	if !ok || built != nil || len(recs) != 1 {
		t.Fatalf("records = %v, %v, %v", recs, built, ok)
	}
	x.keep(gen, []Image{{ID: "one"}})
	if _, _, built, _ := x.records(); len(built) != 1 || built[0].ID != "one" {
		t.Fatalf("kept images not returned: %v", built)
	}
	// A change makes them stale; images built before it are not kept.
	_, gen, _, _ = x.records()
	x.put(x.begin(), rec("b", "2"))
	if recs, _, built, _ := x.records(); built != nil || len(recs) != 2 {
		t.Fatalf("after a change: recs %d, built %v", len(recs), built)
	}
	x.keep(gen, []Image{{ID: "stale"}})
	if _, _, built, _ := x.records(); built != nil {
		t.Errorf("images of an older generation kept: %v", built)
	}
}

// TestIndexSameRecordKeepsBuiltImages: the event of the service's own write
// reads back the value it put; the images built since stay valid, and a
// changed value still makes them stale.
func TestIndexSameRecordKeepsBuiltImages(t *testing.T) {
	x := newIndex()
	a := rec("a", "1")
	a.Labels = map[string]string{"k": "v"}
	x.reset(x.begin(), []images.Image{a})
	x.put(x.begin(), a)
	_, gen, _, _ := x.records()
	x.keep(gen, []Image{{ID: "one"}})
	x.put(x.begin(), a)
	if _, _, built, _ := x.records(); len(built) != 1 {
		t.Fatalf("the same record read again dropped the built images: %v", built)
	}
	for _, changed := range []func(*images.Image){
		func(r *images.Image) { r.Target.Digest = digest.FromString("2") },
		func(r *images.Image) { r.Labels = map[string]string{"k": "w"} },
		func(r *images.Image) { r.Target.Size = 7 },
	} {
		b := a
		b.Labels = maps.Clone(a.Labels)
		changed(&b)
		_, gen, _, _ := x.records()
		x.keep(gen, []Image{{ID: "one"}})
		x.put(x.begin(), b)
		if _, _, built, _ := x.records(); built != nil {
			t.Errorf("record changed to %+v: built images kept", b)
		}
		x.put(x.begin(), a)
	}
}
