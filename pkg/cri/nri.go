package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// NRI is what the handlers call of the Node Resource Interface (pkg/nri):
// one hook per lifecycle event. Config.NRI nil calls none.
type NRI interface {
	// BlockSync holds plugins that connect out of their synchronization
	// until the returned func is called.
	BlockSync() func()
	RunPodSandbox(ctx context.Context, sb sandbox.Sandbox) error
	StopPodSandbox(ctx context.Context, sb sandbox.Sandbox) error
	RemovePodSandbox(ctx context.Context, sb sandbox.Sandbox)
	// UpdatePodSandbox tells plugins of a pod-level resize about to be
	// applied (overhead and resources nil when the request has none); an
	// error refuses it. PostUpdatePodSandbox follows a resize applied.
	UpdatePodSandbox(ctx context.Context, sb sandbox.Sandbox, overhead, resources *runtimeapi.LinuxContainerResources) error
	PostUpdatePodSandbox(ctx context.Context, sb sandbox.Sandbox)
	// CreateContainer answers the plugins' checked adjustment of a
	// container whose spec from the request is spec (nil: none); oomMin
	// is the pod's lowest oom_score_adj.
	CreateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container, spec *specs.Spec, oomMin int) (*ocispec.Adjustment, error)
	PostCreateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container)
	StartContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) error
	PostStartContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container)
	// UpdateContainer answers the resources to set: res, as plugins
	// adjusted them.
	UpdateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container, res *specs.LinuxResources) (*specs.LinuxResources, error)
	PostUpdateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container)
	StopContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container)
	RemoveContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container)
}

// nriCallTimeout bounds one hook: each plugin has NRI's request timeout,
// and a plugin that takes longer is disconnected.
const nriCallTimeout = time.Minute

// noNRI is NRI disabled.
type noNRI struct{}

func (noNRI) BlockSync() func()                                     { return func() {} }
func (noNRI) RunPodSandbox(context.Context, sandbox.Sandbox) error  { return nil }
func (noNRI) StopPodSandbox(context.Context, sandbox.Sandbox) error { return nil }
func (noNRI) RemovePodSandbox(context.Context, sandbox.Sandbox)     {}
func (noNRI) UpdatePodSandbox(context.Context, sandbox.Sandbox, *runtimeapi.LinuxContainerResources, *runtimeapi.LinuxContainerResources) error {
	return nil
}
func (noNRI) PostUpdatePodSandbox(context.Context, sandbox.Sandbox)                   {}
func (noNRI) PostCreateContainer(context.Context, sandbox.Sandbox, sandbox.Container) {}
func (noNRI) StartContainer(context.Context, sandbox.Sandbox, sandbox.Container) error {
	return nil
}
func (noNRI) PostStartContainer(context.Context, sandbox.Sandbox, sandbox.Container)  {}
func (noNRI) PostUpdateContainer(context.Context, sandbox.Sandbox, sandbox.Container) {}
func (noNRI) StopContainer(context.Context, sandbox.Sandbox, sandbox.Container)       {}
func (noNRI) RemoveContainer(context.Context, sandbox.Sandbox, sandbox.Container)     {}
func (noNRI) CreateContainer(context.Context, sandbox.Sandbox, sandbox.Container, *specs.Spec, int) (*ocispec.Adjustment, error) {
	return nil, nil
}
func (noNRI) UpdateContainer(_ context.Context, _ sandbox.Sandbox, _ sandbox.Container, res *specs.LinuxResources) (*specs.LinuxResources, error) {
	return res, nil
}

// nriStopped tells plugins of a container that stopped (once: the caller
// saw it change to EXITED).
func (r *Runtime) nriStopped(id string) {
	c, err := r.store.Container(id)
	if err != nil {
		return
	}
	sb, err := r.store.Sandbox(c.SandboxID)
	if err != nil {
		return
	}
	ctx, cancel := bounded(context.Background(), nriCallTimeout)
	defer cancel()
	r.nri.StopContainer(ctx, sb, c)
}

// SetContainerResources sets resources an NRI plugin asks of a container
// (pkg/nri's Runtime): in its cgroup when it runs, and in its kept spec,
// without asking the plugins again.
func (r *Runtime) SetContainerResources(ctx context.Context, id string, res *specs.LinuxResources) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	c, err := r.store.Container(id)
	if err != nil {
		return err
	}
	unlock := r.lockContainer(c.ID)
	defer unlock()
	if c, err = r.store.Container(c.ID); err != nil {
		return err
	}
	var spec specs.Spec
	if err := json.Unmarshal(c.Spec, &spec); err != nil {
		return fmt.Errorf("spec of %s: %w", c.ID, err)
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	merged := ocispec.MergeResources(spec.Linux.Resources, res)
	return r.setResources(ctx, c, &spec, merged, nil)
}

// EvictContainer stops a container an NRI plugin evicts.
func (r *Runtime) EvictContainer(ctx context.Context, id, reason string) error {
	r.log.Warn("container evicted by an NRI plugin", "container", id, "reason", reason)
	return r.stopContainer(ctx, id, 0)
}

// setResources sets a container's resources: in its cgroup when it runs,
// then in its kept spec (lr is the CRI's request, kept for status; nil
// keeps the last).
func (r *Runtime) setResources(ctx context.Context, c sandbox.Container, spec *specs.Spec, res *specs.LinuxResources, lr *runtimeapi.LinuxContainerResources) error {
	if c.Status.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
		ctrl, err := r.controllerOf(c.SandboxID)
		if err != nil {
			return err
		}
		callCtx, cancel := bounded(ctx, podCallTimeout)
		defer cancel()
		if err := ctrl.UpdateContainerResources(callCtx, c.ID, res); err != nil {
			return fmt.Errorf("update resources of %s: %w", c.ID, err)
		}
	}
	spec.Linux.Resources = res
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if lr == nil {
		lr = c.Config.GetLinux().GetResources()
	}
	return r.store.UpdateSpec(c.ID, specJSON, lr)
}
