package cri

import (
	"context"
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdateContainerResources implements RuntimeService.UpdateContainerResources:
// the new limits go to the running container's cgroup (runc update), and
// into its kept spec, so that a later status or restart of aurae-cri shows
// them.
func (r *Runtime) UpdateContainerResources(ctx context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	lr := req.GetLinux()
	if lr == nil {
		return nil, fmt.Errorf("linux resources are missing: %w", errInvalid)
	}
	c, err := r.store.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	unlock := r.lockContainer(c.ID)
	defer unlock()
	if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING && c.Status.State != runtimeapi.ContainerState_CONTAINER_CREATED {
		return nil, fmt.Errorf("container %s is %s: %w", c.ID, c.Status.State, errPrecondition)
	}
	var spec specs.Spec
	if err := json.Unmarshal(c.Spec, &spec); err != nil {
		return nil, fmt.Errorf("spec of %s: %w", c.ID, err)
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	res := mergeResources(spec.Linux.Resources, lr)
	sb, err := r.store.Sandbox(c.SandboxID)
	if err != nil {
		return nil, err
	}
	nriCtx, nriCancel := bounded(ctx, nriCallTimeout)
	res, err = r.nri.UpdateContainer(nriCtx, sb, c, res)
	nriCancel()
	if err != nil {
		return nil, fmt.Errorf("update resources of %s: %w", c.ID, err)
	}
	if err := r.setResources(ctx, c, &spec, res, lr); err != nil {
		return nil, err
	}
	if c, err := r.store.Container(c.ID); err == nil {
		nriCtx, cancel := bounded(ctx, nriCallTimeout)
		r.nri.PostUpdateContainer(nriCtx, sb, c)
		cancel()
	}
	r.log.Info("container resources updated", "pod", c.SandboxID, "container", c.ID)
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// mergeResources applies the CRI's resources over the spec's (what the
// CRI leaves zero stays as it was).
func mergeResources(cur *specs.LinuxResources, lr *runtimeapi.LinuxContainerResources) *specs.LinuxResources {
	res := &specs.LinuxResources{}
	if cur != nil {
		*res = *cur
	}
	if res.CPU == nil {
		res.CPU = &specs.LinuxCPU{}
	}
	if v := lr.GetCpuShares(); v > 0 {
		u := uint64(v)
		res.CPU.Shares = &u
	}
	if v := lr.GetCpuQuota(); v != 0 {
		res.CPU.Quota = &v
	}
	if v := lr.GetCpuPeriod(); v > 0 {
		u := uint64(v)
		res.CPU.Period = &u
	}
	if v := lr.GetCpusetCpus(); v != "" {
		res.CPU.Cpus = v
	}
	if v := lr.GetCpusetMems(); v != "" {
		res.CPU.Mems = v
	}
	if v := lr.GetMemoryLimitInBytes(); v > 0 {
		if res.Memory == nil {
			res.Memory = &specs.LinuxMemory{}
		}
		res.Memory.Limit = &v
		if res.Memory.Swap != nil && *res.Memory.Swap < v {
			res.Memory.Swap = &v
		}
	}
	return res
}
