package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// UpdatePodResources implements PodService.UpdatePodResources.
func (s *Service) UpdatePodResources(_ context.Context, req *podsv0.UpdatePodResourcesRequest) (*podsv0.UpdatePodResourcesResponse, error) {
	if err := s.updatePodResources(req.GetPodId(), req.GetLinuxResources()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &podsv0.UpdatePodResourcesResponse{}, nil
}

// updatePodResources gives the pod's cgroup exactly the limits asked for;
// its containers' own cgroups below are left as they are.
func (s *Service) updatePodResources(id string, raw []byte) error {
	if err := validID("pod", id); err != nil {
		return err
	}
	var lr specs.LinuxResources
	if err := json.Unmarshal(raw, &lr); err != nil {
		return fmt.Errorf("update pod %q: resources: %w: %w", id, err, errdefs.ErrInvalidArgument)
	}
	res, err := PodCgroupResources(&lr)
	if err != nil {
		return fmt.Errorf("update pod %q: %w", id, err)
	}
	p, err := s.lookupPod(id)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.freed {
		return fmt.Errorf("pod %q: %w", id, errdefs.ErrNotFound)
	}
	cg, err := cgroup.Load(p.paths.GetCgroupPath())
	if err != nil {
		return fmt.Errorf("update pod %q: %w: %w", id, err, errdefs.ErrFailedPrecondition)
	}
	if err := cg.Set(res); err != nil {
		return fmt.Errorf("update pod %q: %w", id, kernelRefusal(err))
	}
	if err := s.syncUnitLimits(p, res); err != nil {
		return fmt.Errorf("update pod %q: %w", id, err)
	}
	s.log.Info("pod resources updated", "pod", id, "cgroup", cg.Path(), "cpu_shares", res.CPUShares,
		"cpu_quota", res.CPUQuota, "cpu_period", res.CPUPeriod, "cpus", res.Cpus, "mems", res.Mems,
		"memory_limit", res.MemoryLimit, "memory_swap", res.MemorySwap, "hugepages", len(res.Hugepages), "unified", len(res.Unified))
	return nil
}

// kernelRefusal gives a failed cgroup write its kind: what the host lacks
// or the kernel refuses in the pod's present state (a memory limit below
// its usage, a cpuset without its containers' cpus) is a precondition, a
// value the kernel rejects an invalid argument.
func kernelRefusal(err error) error {
	switch {
	case errors.Is(err, cgroup.ErrUnsupported), errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ERANGE):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return err
}

// Bounds of the kernel's CFS bandwidth and of v1 cpu.shares.
const (
	minCFSPeriod = 1000    // µs
	maxCFSPeriod = 1000000 // µs
	minCFSQuota  = 1000    // µs
	minShares    = 2
	maxShares    = 262144
)

// PodCgroupResources checks an OCI LinuxResources asked of a pod's cgroup
// and converts it: cpu (shares, quota, period, cpus, mems), memory (limit,
// swap), hugepage limits and unified keys; anything else is refused
// (InvalidArgument naming the field), nothing is left out.
func PodCgroupResources(lr *specs.LinuxResources) (cgroup.Resources, error) {
	var out cgroup.Resources
	invalid := func(format string, a ...any) error {
		return fmt.Errorf(format+": %w", append(a, errdefs.ErrInvalidArgument)...)
	}
	switch {
	case len(lr.Devices) > 0:
		return out, invalid("devices are not a pod resource")
	case lr.Pids != nil:
		return out, invalid("pids is not a pod resource here")
	case lr.BlockIO != nil:
		return out, invalid("blockIO is not a pod resource here")
	case len(lr.Rdma) > 0:
		return out, invalid("rdma is not a pod resource here")
	case lr.Network != nil:
		return out, invalid("network is not a pod resource here")
	}
	if c := lr.CPU; c != nil {
		if c.RealtimePeriod != nil || c.RealtimeRuntime != nil || c.Idle != nil || c.Burst != nil {
			return out, invalid("cpu: only shares, quota, period, cpus and mems can be set on a pod")
		}
		if c.Shares != nil && *c.Shares != 0 {
			if *c.Shares < minShares || *c.Shares > maxShares {
				return out, invalid("cpu shares %d are out of [%d, %d]", *c.Shares, minShares, maxShares)
			}
			out.CPUShares = *c.Shares
		}
		if c.Period != nil && *c.Period != 0 {
			if *c.Period < minCFSPeriod || *c.Period > maxCFSPeriod {
				return out, invalid("cpu period %d µs is out of [%d, %d]", *c.Period, minCFSPeriod, maxCFSPeriod)
			}
			out.CPUPeriod = *c.Period
		}
		if c.Quota != nil && *c.Quota != 0 && *c.Quota != -1 {
			if *c.Quota < minCFSQuota {
				return out, invalid("cpu quota %d µs is neither -1 (none) nor at least %d", *c.Quota, minCFSQuota)
			}
			out.CPUQuota = *c.Quota
		}
		var err error
		if out.Cpus, err = cpuList("cpus", c.Cpus); err != nil {
			return out, err
		}
		if out.Mems, err = cpuList("mems", c.Mems); err != nil {
			return out, err
		}
	}
	if m := lr.Memory; m != nil {
		//nolint:staticcheck // Kernel is deprecated: refused here, never applied.
		if m.Reservation != nil || m.Kernel != nil || m.KernelTCP != nil || m.Swappiness != nil || m.DisableOOMKiller != nil || m.UseHierarchy != nil || m.CheckBeforeUpdate != nil {
			return out, invalid("memory: only limit and swap can be set on a pod")
		}
		if m.Limit != nil && *m.Limit != -1 {
			if *m.Limit < 0 {
				return out, invalid("memory limit %d is negative", *m.Limit)
			}
			out.MemoryLimit = *m.Limit
		}
		if m.Swap != nil && *m.Swap != -1 && *m.Swap != 0 {
			if *m.Swap < 0 || out.MemoryLimit <= 0 || *m.Swap < out.MemoryLimit {
				return out, invalid("memory swap %d is not -1 (none) nor at least the memory limit %d", *m.Swap, out.MemoryLimit)
			}
			out.MemorySwap = *m.Swap
		}
	}
	for _, h := range lr.HugepageLimits {
		if out.Hugepages == nil {
			out.Hugepages = map[string]uint64{}
		}
		if _, dup := out.Hugepages[h.Pagesize]; dup {
			return out, invalid("hugepage size %q is named twice", h.Pagesize)
		}
		out.Hugepages[h.Pagesize] = h.Limit
	}
	for k, v := range lr.Unified {
		if err := cgroup.ValidUnifiedKey(k); err != nil {
			return out, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		if len(v) > 4096 {
			return out, invalid("unified key %q: the value is longer than 4096 bytes", k)
		}
	}
	out.Unified = lr.Unified
	return out, nil
}

// cpuList checks a cpuset list ("0-3,6"); "" is none.
func cpuList(what, s string) (string, error) {
	if s != "" && !linux.ValidCPUList(s) {
		return "", fmt.Errorf("cpuset %s %q is not a list such as 0-3,6 (ascending, below %d): %w", what, s, linux.MaxCPUNumber, errdefs.ErrInvalidArgument)
	}
	return s, nil
}
