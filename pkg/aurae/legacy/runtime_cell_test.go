package legacy

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

func TestPlanCell(t *testing.T) {
	ctr := func(name, img string) *runtimeapi.Container {
		return &runtimeapi.Container{Meta: &metaapi.AuraeMeta{Name: name}, Image: img}
	}
	cell := func(name string, cs ...*runtimeapi.Container) *runtimeapi.Cell {
		return &runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: name}, Containers: cs}
	}
	p, err := planCell(cell("web", ctr("app", "a:1"), &runtimeapi.Container{Image: "b:1"}))
	if err != nil {
		t.Fatal(err)
	}
	want := []cellContainer{{Name: "app", ID: "web.app"}, {Name: "c1", ID: "web.c1"}}
	if !slices.Equal(p.containers, want) || !slices.Equal(p.images, []string{"a:1", "b:1"}) {
		t.Fatalf("plan = %+v", p)
	}
	for _, tc := range []struct {
		cell *runtimeapi.Cell
		says string
	}{
		{cell(""), "cell.meta.name"},
		{cell("../up", ctr("a", "a:1")), "cell.meta.name"},
		{cell(".hidden", ctr("a", "a:1")), "cell.meta.name"},
		{cell("web"), "cell.containers is empty"},
		{cell("web", ctr("a/b", "a:1")), "cell.containers[0].meta.name"},
		{cell("web", ctr("a", "")), "cell.containers[0].image is empty"},
		{cell("web", ctr("a", "a:1"), ctr("a", "b:1")), `cell.containers[1].meta.name "a" given twice`},
		{cell("web", ctr(strings.Repeat("x", 61), "a:1")), "longer than 64"},
	} {
		if _, err := planCell(tc.cell); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("planCell(%v) = %v, want InvalidArgument saying %q", tc.cell, err, tc.says)
		}
	}
	pp, err := planPod(&runtimeapi.Pod{Meta: &metaapi.AuraeMeta{Name: "vm"}, Cells: []*runtimeapi.Cell{cell("web", ctr("app", "a:1")), cell("db", ctr("pg", "p:1"))}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []cellContainer{{Name: "web.app", ID: "vm.web.app"}, {Name: "db.pg", ID: "vm.db.pg"}}; !slices.Equal(pp.containers, want) {
		t.Fatalf("pod plan = %+v", pp.containers)
	}
}

// fakePods is a PodService that knows which pods exist and records Frees.
type fakePods struct {
	Pods
	pods  map[string]map[string]string // id → labels
	freed []string
}

func (f *fakePods) Free(_ context.Context, req *podsv0.FreeRequest) (*podsv0.FreeResponse, error) {
	f.freed = append(f.freed, req.GetPodId())
	delete(f.pods, req.GetPodId())
	return &podsv0.FreeResponse{}, nil
}

func (f *fakePods) ListPods(context.Context, *podsv0.ListPodsRequest) (*podsv0.ListPodsResponse, error) {
	resp := &podsv0.ListPodsResponse{}
	for id, labels := range f.pods {
		resp.Pods = append(resp.Pods, &podsv0.PodStatus{Pod: &podsv0.Pod{Id: id, Labels: labels}})
	}
	return resp, nil
}

// fakeImages records the rootfs removed.
type fakeImages struct{ removed []string }

func (f *fakeImages) Pull(context.Context, string, *criapi.AuthConfig) (string, error) {
	return "", errors.New("not pulled in this test")
}
func (f *fakeImages) Resolve(context.Context, string) (image.Image, error) {
	return image.Image{}, errdefs.ErrNotFound
}
func (f *fakeImages) PrepareRootfs(context.Context, string, string) ([]image.Mount, error) {
	return nil, errdefs.ErrNotFound
}
func (f *fakeImages) RemoveRootfs(_ context.Context, id string) error {
	f.removed = append(f.removed, id)
	return nil
}

// TestCellRecovery: at start, a cell cut short in its creation is undone
// (its labelled pod freed, its snapshots removed), a running cell whose
// pod is gone is released, a running cell whose pod lives is kept, a pod
// with the cell's name but not RunCell's label is not freed.
func TestCellRecovery(t *testing.T) {
	dir := t.TempDir()
	pods := &fakePods{pods: map[string]map[string]string{
		"half":    {labelCell: "half"},
		"alive":   {labelCell: "alive"},
		"foreign": nil,
	}}
	imgs := &fakeImages{}
	st := &cellStore{dir: dir, pods: pods, images: func(context.Context) (ImageStore, error) { return imgs, nil }, log: slog.Default()}
	for _, rec := range []cellRecord{
		{Cell: "half", State: cellCreating, Containers: []cellContainer{{Name: "a", ID: "half.a"}}},
		{Cell: "gone", State: cellRunning, Containers: []cellContainer{{Name: "a", ID: "gone.a"}}},
		{Cell: "alive", State: cellRunning, Containers: []cellContainer{{Name: "a", ID: "alive.a"}}},
		{Cell: "foreign", State: cellCreating},
		{Cell: "vm", Kind: kindPod, State: cellCreating, Containers: []cellContainer{{Name: "w.a", ID: "vm.w.a"}}},
	} {
		if err := st.create(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "norecord"), 0o700); err != nil {
		t.Fatal(err)
	}
	st.recover(t.Context(), "")
	if !slices.Equal(pods.freed, []string{"half"}) {
		t.Errorf("freed %v, want [half]", pods.freed)
	}
	slices.Sort(imgs.removed)
	if !slices.Equal(imgs.removed, []string{"gone.a", "half.a"}) {
		t.Errorf("rootfs removed %v, want gone.a and half.a", imgs.removed)
	}
	ents, _ := os.ReadDir(dir)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	// The VM pod's record waits for the VM pass.
	if !slices.Equal(left, []string{"alive", "vm"}) {
		t.Errorf("records left %v, want alive and vm", left)
	}
	if err := st.create(cellRecord{Cell: "alive"}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("create of a known cell = %v, want AlreadyExists", err)
	}
}
