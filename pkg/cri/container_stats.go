package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

const statsTimeout = 10 * time.Second

// ContainerStats implements RuntimeService.ContainerStats.
func (r *Runtime) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	c, err := r.store.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ContainerStatsResponse{Stats: r.containerStats(ctx, c)}, nil
}

// ListContainerStats implements RuntimeService.ListContainerStats for the
// running containers matching the filter.
func (r *Runtime) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	f := req.GetFilter()
	resp := &runtimeapi.ListContainerStatsResponse{}
	for _, c := range r.store.Containers() {
		if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		if f != nil {
			if f.GetId() != "" && !hasIDPrefix(c.ID, f.GetId()) {
				continue
			}
			if f.GetPodSandboxId() != "" && !hasIDPrefix(c.SandboxID, f.GetPodSandboxId()) {
				continue
			}
			if !matchLabels(c.Config.GetLabels(), f.GetLabelSelector()) {
				continue
			}
		}
		resp.Stats = append(resp.Stats, r.containerStats(ctx, c))
	}
	return resp, nil
}

// containerStats asks the controller for CPU and memory; a container whose
// runtime does not answer gets attributes without numbers, so that one
// wedged pod does not fail the kubelet's whole poll.
func (r *Runtime) containerStats(ctx context.Context, c sandbox.Container) *runtimeapi.ContainerStats {
	st := &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{
		Id: c.ID, Metadata: c.Config.GetMetadata(), Labels: c.Config.GetLabels(), Annotations: c.Config.GetAnnotations(),
	}}
	now := time.Now().UnixNano()
	st.WritableLayer = &runtimeapi.FilesystemUsage{
		Timestamp: now, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: r.rootfsDir(c.ID)},
		UsedBytes: &runtimeapi.UInt64Value{Value: dirUsage(r.upperDir(c.ID))}, InodesUsed: &runtimeapi.UInt64Value{},
	}
	if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return st
	}
	ctrl, err := r.controllerOf(c.SandboxID)
	if err != nil {
		return st
	}
	callCtx, cancel := bounded(ctx, statsTimeout)
	defer cancel()
	s, err := ctrl.ContainerStats(callCtx, c.ID)
	if err != nil {
		r.log.Debug("container stats", "container", c.ID, "error", err)
		return st
	}
	ts := now
	if !s.Timestamp.IsZero() {
		ts = s.Timestamp.UnixNano()
	}
	st.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: s.CPUUsageNanos}}
	st.Memory = &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: &runtimeapi.UInt64Value{Value: s.MemoryWorkingSetBytes}}
	return st
}
