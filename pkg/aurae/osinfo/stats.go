package osinfo

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// stats answers for what containers lists, under the same namespace, id,
// pod id and name: with driver CONTAINERD pod containers (their own
// cgroup's figures) and cells' executables (their cell's: an executable
// shares its cell's cgroup), with driver CRI the CRI runtime's containers.
func (s *Service) stats(ctx context.Context, req *osapi.StatsRequest) (*osapi.StatsResponse, error) {
	var list []*osapi.Stat
	switch req.GetDriver() {
	case commonapi.ContainerDriver_CRI:
		cri, err := s.dialCRI(ctx)
		if err != nil {
			return nil, err
		}
		defer cri.close()
		if list, err = cri.stats(ctx, req.GetNamespace()); err != nil {
			return nil, err
		}
	case commonapi.ContainerDriver_CONTAINERD:
		var err error
		if list, err = s.podStats(ctx, req.GetNamespace()); err != nil {
			return nil, err
		}
		if matches(req.GetNamespace(), NamespaceCells) {
			cells, err := s.cfg.Cells.List(ctx, &cellsv0.CellServiceListRequest{})
			if err != nil {
				return nil, err
			}
			execs, err := s.executableStats(ctx, appendExecutables(nil, cells.GetCells()))
			if err != nil {
				return nil, err
			}
			list = append(list, execs...)
		}
	default:
		return nil, unknownDriver(req.GetDriver())
	}
	return &osapi.StatsResponse{Messages: []*osapi.Stats{{Metadata: s.meta(), Stats: list}}}, nil
}

// podStats are the figures of the pod containers of a namespace.
func (s *Service) podStats(ctx context.Context, namespace string) ([]*osapi.Stat, error) {
	var list []*osapi.Stat
	for _, c := range s.cfg.Pods.Containers() {
		info := podContainer(c)
		if !matches(namespace, info.GetNamespace()) {
			continue
		}
		st, err := s.cfg.Pods.ContainerStats(ctx, &podsv0.ContainerStatsRequest{ContainerId: info.GetId()})
		// The PodService answers gRPC statuses.
		if errdefs.IsNotFound(errgrpc.ToNative(err)) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		list = append(list, stat(info, st.GetCpuUsageNanos(), st.GetMemoryWorkingSetBytes()))
	}
	return list, nil
}

// executableStats gives each executable (as containers lists them: the
// cell as the pod) its cell's figures, each cell read once. An executable
// whose cell was freed meanwhile is left out, as a removed pod container is.
func (s *Service) executableStats(ctx context.Context, execs []*osapi.ContainerInfo) ([]*osapi.Stat, error) {
	usage := map[string]*cgroup.Usage{}
	var list []*osapi.Stat
	for _, e := range execs {
		cell := e.GetPodId()
		u, read := usage[cell]
		if !read {
			got, err := s.cfg.Cells.Usage(ctx, cell)
			switch {
			case errdefs.IsNotFound(err):
			case err != nil:
				return nil, fmt.Errorf("stats of executable %q: %w", e.GetId(), err)
			default:
				u = &got
			}
			usage[cell] = u
		}
		if u != nil {
			list = append(list, stat(e, uint64(u.CPU), u.MemoryWorkingSet))
		}
	}
	return list, nil
}

func stat(c *osapi.ContainerInfo, cpu, memory uint64) *osapi.Stat {
	return &osapi.Stat{
		Namespace:   c.GetNamespace(),
		Id:          c.GetId(),
		MemoryUsage: memory,
		CpuUsage:    cpu,
		PodId:       c.GetPodId(),
		Name:        c.GetName(),
	}
}
