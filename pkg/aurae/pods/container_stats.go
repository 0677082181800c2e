package pods

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
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
	if !cgroup.Exists(path) {
		return resp, nil
	}
	cg, err := cgroup.Load(path)
	if err != nil {
		return resp, nil
	}
	if cpu, err := cg.CPUUsage(); err == nil {
		resp.CpuUsageNanos = uint64(cpu)
	}
	ws, err := workingSet(path)
	if err != nil {
		return nil, fmt.Errorf("stats of %q: %w", id, err)
	}
	resp.MemoryWorkingSetBytes = ws
	addMetrics(resp, path, rec.Pid)
	return resp, nil
}

func workingSet(path string) (uint64, error) {
	usageFile, statKey := cgroup.ControllerFile(path, "memory", "memory.usage_in_bytes"), "total_inactive_file"
	if cgroup.Unified() {
		usageFile, statKey = cgroup.ControllerFile(path, "", "memory.current"), "inactive_file"
	}
	b, err := os.ReadFile(usageFile)
	if err != nil {
		return 0, err
	}
	usage, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, err
	}
	st, err := os.ReadFile(cgroup.ControllerFile(path, "memory", "memory.stat"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, statKey+" "); ok {
			inactive, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err == nil && inactive < usage {
				return usage - inactive, nil
			}
			return 0, nil
		}
	}
	return usage, nil
}
