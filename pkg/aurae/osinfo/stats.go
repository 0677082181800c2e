package osinfo

import (
	"context"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

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
		// Pod containers: cells' executables share their cell's cgroup.
		for _, c := range s.cfg.Pods.Containers() {
			info := podContainer(c)
			if !matches(req.GetNamespace(), info.GetNamespace()) {
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
			list = append(list, &osapi.Stat{
				Namespace:   info.GetNamespace(),
				Id:          info.GetId(),
				MemoryUsage: st.GetMemoryWorkingSetBytes(),
				CpuUsage:    st.GetCpuUsageNanos(),
				PodId:       info.GetPodId(),
				Name:        info.GetName(),
			})
		}
	default:
		return nil, unknownDriver(req.GetDriver())
	}
	return &osapi.StatsResponse{Messages: []*osapi.Stats{{Metadata: s.meta(), Stats: list}}}, nil
}
