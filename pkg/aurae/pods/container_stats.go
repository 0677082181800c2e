package pods

import (
	"context"
	"errors"
	"fmt"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// stats reads the container's cgroup: CPU time and the memory working set
// (usage minus inactive file pages, as cadvisor and the kubelet count it),
// and what the CRI's metrics need besides (addMetrics).
// A container whose cgroup is gone reports zeros.
func (s *Service) stats(_ context.Context, id string) (*podsv0.ContainerStatsResponse, error) {
	if err := validID("container", id); err != nil {
		return nil, err
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return nil, err
	}
	rec := c.record()
	path := rec.CgroupPath
	resp := &podsv0.ContainerStatsResponse{ContainerId: id, Timestamp: time.Now().UnixNano()}
	u, err := cgroup.ReadUsage(path)
	if errors.Is(err, cgroup.ErrNotExist) {
		return resp, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stats of %q: %w", id, err)
	}
	resp.CpuUsageNanos, resp.MemoryWorkingSetBytes = uint64(u.CPU), u.MemoryWorkingSet
	addMetrics(resp, path, rec.Pid)
	return resp, nil
}
