package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// ContainerStats implements RuntimeService.ContainerStats.
func (r *Runtime) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	c, err := r.store.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	var figures map[string]controller.Stats
	if c.Status.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
		figures = r.collectStats(ctx, []sandbox.Container{c})
	}
	return &runtimeapi.ContainerStatsResponse{Stats: r.containerStats(c, figures, upperDirs())}, nil
}

// ListContainerStats implements RuntimeService.ListContainerStats for the
// running containers matching the filter.
func (r *Runtime) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	return &runtimeapi.ListContainerStatsResponse{Stats: r.listContainerStats(ctx, req.GetFilter())}, nil
}

// listContainerStats are the stats of the running containers matching f
// (all for nil): what ListContainerStats and StreamContainerStats answer.
// The controllers are asked in parallel, each call with its own deadline;
// a container whose pod does not answer in time has its last known
// figures.
func (r *Runtime) listContainerStats(ctx context.Context, f *runtimeapi.ContainerStatsFilter) []*runtimeapi.ContainerStats {
	var cs []sandbox.Container
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
		cs = append(cs, c)
	}
	r.pruneStats()
	figures := r.collectStats(ctx, cs)
	out := make([]*runtimeapi.ContainerStats, 0, len(cs))
	uppers := upperDirs()
	for _, c := range cs {
		out = append(out, r.containerStats(c, figures, uppers))
	}
	return out
}

// containerStats is a container's stats from its figures (none for a
// container whose runtime never answered: attributes without numbers, so
// that one wedged pod does not fail the kubelet's whole poll); its
// writable layer's usage is that of its rootfs's upper dir (uppers, from
// upperDirs).
func (r *Runtime) containerStats(c sandbox.Container, figures map[string]controller.Stats, uppers map[string]string) *runtimeapi.ContainerStats {
	st := &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{
		Id: c.ID, Metadata: c.Config.GetMetadata(), Labels: c.Config.GetLabels(), Annotations: c.Config.GetAnnotations(),
	}}
	now := time.Now().UnixNano()
	upper := c.UpperDir
	if upper == "" { // recorded before the upper dir was
		upper = uppers[r.rootfsDir(c.ID)]
	}
	st.WritableLayer = &runtimeapi.FilesystemUsage{
		Timestamp: now, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: r.rootfsDir(c.ID)},
		UsedBytes: &runtimeapi.UInt64Value{Value: dirUsage(upper)}, InodesUsed: &runtimeapi.UInt64Value{},
	}
	s, ok := figures[c.ID]
	if !ok {
		return st
	}
	ts := s.Timestamp.UnixNano()
	st.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: s.CPUUsageNanos}}
	st.Memory = &runtimeapi.MemoryUsage{
		Timestamp: ts, WorkingSetBytes: &runtimeapi.UInt64Value{Value: s.MemoryWorkingSetBytes},
		UsageBytes: &runtimeapi.UInt64Value{Value: s.MemoryUsageBytes}, RssBytes: &runtimeapi.UInt64Value{Value: s.MemoryRSSBytes},
		PageFaults: &runtimeapi.UInt64Value{Value: s.MemoryPgfault}, MajorPageFaults: &runtimeapi.UInt64Value{Value: s.MemoryPgmajfault},
	}
	return st
}
