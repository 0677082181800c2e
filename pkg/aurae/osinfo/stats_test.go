package osinfo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// fakePods runs one container, "ctr" of pod "pod" in namespace "e2e".
type fakePods struct{}

func (fakePods) Containers() []pods.ContainerInfo {
	return []pods.ContainerInfo{{
		Status:      &podsv0.ContainerStatus{Id: "ctr", PodId: "pod", Pid: 42, State: podsv0.ContainerState_CONTAINER_STATE_RUNNING},
		Annotations: map[string]string{ocispec.AnnotationSandboxNamespace: "e2e", ocispec.AnnotationContainerName: "web"},
	}}
}

func (fakePods) ContainerStats(_ context.Context, req *podsv0.ContainerStatsRequest) (*podsv0.ContainerStatsResponse, error) {
	if req.GetContainerId() != "ctr" {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	return &podsv0.ContainerStatsResponse{ContainerId: "ctr", CpuUsageNanos: 7, MemoryWorkingSetBytes: 8}, nil
}

func (fakePods) Restart(context.Context, string, time.Duration) (*podsv0.ContainerStatus, error) {
	return nil, errdefs.ErrNotImplemented
}

// fakeCells holds cell "web" with executables "a" and "b", nested cell
// "web/db" with "c", and "gone" with "d", freed before its usage is read.
type fakeCells struct {
	usage map[string]cgroup.Usage
	err   error // Usage's answer for a cell it has no figures of
	reads map[string]int
}

func newFakeCells() *fakeCells {
	return &fakeCells{
		usage: map[string]cgroup.Usage{
			"web":    {CPU: 3 * time.Second, MemoryWorkingSet: 1 << 20},
			"web/db": {CPU: time.Second, MemoryWorkingSet: 1 << 10},
		},
		err:   fmt.Errorf("cell: %w", errdefs.ErrNotFound),
		reads: map[string]int{},
	}
}

func executables(names ...string) []*cellsv0.ExecutableStatus {
	var out []*cellsv0.ExecutableStatus
	for i, n := range names {
		out = append(out, &cellsv0.ExecutableStatus{Name: n, Pid: int32(100 + i), State: cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING})
	}
	return out
}

func (f *fakeCells) List(context.Context, *cellsv0.CellServiceListRequest) (*cellsv0.CellServiceListResponse, error) {
	return &cellsv0.CellServiceListResponse{Cells: []*cellsv0.CellGraphNode{
		{Cell: &cellsv0.Cell{Name: "gone"}, Executables: executables("d")},
		{Cell: &cellsv0.Cell{Name: "web"}, Executables: executables("a", "b"), Children: []*cellsv0.CellGraphNode{
			{Cell: &cellsv0.Cell{Name: "web/db"}, Executables: executables("c")},
		}},
	}}, nil
}

func (f *fakeCells) Usage(_ context.Context, cell string) (cgroup.Usage, error) {
	f.reads[cell]++
	if u, ok := f.usage[cell]; ok {
		return u, nil
	}
	return cgroup.Usage{}, f.err
}

// key is what joins a Stat to the ContainerInfo it is about.
func key(namespace, id, podID, name string) string {
	return strings.Join([]string{namespace, id, podID, name}, "|")
}

func statsByKey(t *testing.T, s *Service, namespace string) map[string]*osapi.Stat {
	t.Helper()
	resp, err := s.Stats(t.Context(), &osapi.StatsRequest{Namespace: namespace})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*osapi.Stat{}
	for _, st := range resp.GetMessages()[0].GetStats() {
		out[key(st.GetNamespace(), st.GetId(), st.GetPodId(), st.GetName())] = st
	}
	return out
}

// TestStatsListsWhatContainersLists: Stats answers for the pod container
// and every executable of a live cell under the keys Containers gives them,
// each executable with its own cell's figures, each cell read once.
func TestStatsListsWhatContainersLists(t *testing.T) {
	cells := newFakeCells()
	s := New(Config{NodeName: "here", Pods: fakePods{}, Cells: cells})
	stats := statsByKey(t, s, "")
	want := map[string][2]uint64{
		key("e2e", "ctr", "pod", "web"):                {7, 8},
		key(NamespaceCells, "web/a", "web", "a"):       {uint64(3 * time.Second), 1 << 20},
		key(NamespaceCells, "web/b", "web", "b"):       {uint64(3 * time.Second), 1 << 20},
		key(NamespaceCells, "web/db/c", "web/db", "c"): {uint64(time.Second), 1 << 10},
	}
	if len(stats) != len(want) {
		t.Fatalf("Stats has %d entries, want %d: %v", len(stats), len(want), stats)
	}
	for k, w := range want {
		st := stats[k]
		if st == nil || st.GetCpuUsage() != w[0] || st.GetMemoryUsage() != w[1] {
			t.Errorf("Stats[%s] = %v, want cpu %d, memory %d", k, st, w[0], w[1])
		}
	}
	if cells.reads["web"] != 1 || cells.reads["web/db"] != 1 || cells.reads["gone"] != 1 {
		t.Errorf("cell usage reads = %v, want one per cell", cells.reads)
	}

	// Every entry joins one of Containers'.
	ctrs, err := s.Containers(t.Context(), &osapi.ContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, c := range ctrs.GetMessages()[0].GetContainers() {
		listed[key(c.GetNamespace(), c.GetId(), c.GetPodId(), c.GetName())] = true
	}
	for k := range stats {
		if !listed[k] {
			t.Errorf("Stats has %s, which Containers does not list (%v)", k, listed)
		}
	}
}

func TestStatsNamespaces(t *testing.T) {
	s := New(Config{NodeName: "here", Pods: fakePods{}, Cells: newFakeCells()})
	if got := statsByKey(t, s, "e2e"); len(got) != 1 || got[key("e2e", "ctr", "pod", "web")] == nil {
		t.Errorf("namespace e2e: %v, want the pod container alone", got)
	}
	got := statsByKey(t, s, NamespaceCells)
	if len(got) != 3 || got[key(NamespaceCells, "web/db/c", "web/db", "c")] == nil {
		t.Errorf("namespace cells: %v, want the three executables of live cells", got)
	}
	if got := statsByKey(t, s, "elsewhere"); len(got) != 0 {
		t.Errorf("namespace elsewhere: %v, want none", got)
	}
}

// TestStatsFailsOnUnreadableCell: a cell whose figures cannot be read
// (other than gone) fails the call, naming the executable.
func TestStatsFailsOnUnreadableCell(t *testing.T) {
	cells := newFakeCells()
	cells.err = errors.New("memory.stat: permission denied")
	s := New(Config{NodeName: "here", Pods: fakePods{}, Cells: cells})
	_, err := s.Stats(t.Context(), &osapi.StatsRequest{Namespace: NamespaceCells})
	if err == nil || !strings.Contains(err.Error(), `executable "gone/d"`) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("Stats with an unreadable cell = %v, want an error naming gone/d", err)
	}
}
