package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// PodSandboxStats implements RuntimeService.PodSandboxStats.
func (r *Runtime) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	stats := r.sandboxStats(ctx, []sandbox.Sandbox{sb})
	return &runtimeapi.PodSandboxStatsResponse{Stats: stats[0]}, nil
}

// ListPodSandboxStats implements RuntimeService.ListPodSandboxStats for the
// pods matching the filter.
func (r *Runtime) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: r.listPodSandboxStats(ctx, req.GetFilter())}, nil
}

// listPodSandboxStats are the stats of the pods matching f (all for nil):
// what ListPodSandboxStats and StreamPodSandboxStats answer. As for
// container stats, the controllers are asked in parallel, and a wedged pod
// answers its last known figures.
func (r *Runtime) listPodSandboxStats(ctx context.Context, f *runtimeapi.PodSandboxStatsFilter) []*runtimeapi.PodSandboxStats {
	var sbs []sandbox.Sandbox
	for _, sb := range r.store.Sandboxes() {
		if f != nil {
			if f.GetId() != "" && !hasIDPrefix(sb.ID, f.GetId()) {
				continue
			}
			if !matchLabels(sb.Config.GetLabels(), f.GetLabelSelector()) {
				continue
			}
		}
		sbs = append(sbs, sb)
	}
	r.pruneStats()
	return r.sandboxStats(ctx, sbs)
}

// sandboxStats are the stats of pods: each with its running containers'
// stats, and as the pod's CPU and memory their sums (the pod's containers
// are all there is in its cgroup but their monitors).
func (r *Runtime) sandboxStats(ctx context.Context, sbs []sandbox.Sandbox) []*runtimeapi.PodSandboxStats {
	byPod, wanted := r.runningByPod(sbs)
	figures := r.collectStats(ctx, wanted)
	out := make([]*runtimeapi.PodSandboxStats, 0, len(sbs))
	uppers := upperDirs()
	for _, sb := range sbs {
		st := &runtimeapi.PodSandboxStats{
			Attributes: &runtimeapi.PodSandboxAttributes{
				Id: sb.ID, Metadata: sb.Config.GetMetadata(), Labels: sb.Config.GetLabels(), Annotations: sb.Config.GetAnnotations(),
			},
			Linux: &runtimeapi.LinuxPodSandboxStats{},
		}
		var cpu, mem, procs uint64
		var ts time.Time
		n := 0
		for _, c := range byPod[sb.ID] {
			st.Linux.Containers = append(st.Linux.Containers, r.containerStats(c, figures, uppers))
			if s, ok := figures[c.ID]; ok {
				cpu, mem, procs, n = cpu+s.CPUUsageNanos, mem+s.MemoryWorkingSetBytes, procs+s.Processes, n+1
				ts = latest(ts, s)
			}
		}
		if n > 0 {
			st.Linux.Cpu = &runtimeapi.CpuUsage{Timestamp: ts.UnixNano(), UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: cpu}}
			st.Linux.Memory = &runtimeapi.MemoryUsage{Timestamp: ts.UnixNano(), WorkingSetBytes: &runtimeapi.UInt64Value{Value: mem}}
			st.Linux.Process = &runtimeapi.ProcessUsage{Timestamp: ts.UnixNano(), ProcessCount: &runtimeapi.UInt64Value{Value: procs}}
		}
		if net, ok := podNetwork(sb, byPod[sb.ID], figures); ok {
			st.Linux.Network = networkUsage(net)
		}
		out = append(out, st)
	}
	return out
}

// podNetwork are the figures of the pod's network: those of the first of
// its running containers cs that has interfaces; none for a pod on the
// node's network (they would be the node's, and cadvisor has none either).
func podNetwork(sb sandbox.Sandbox, cs []sandbox.Container, figures map[string]controller.Stats) (controller.Stats, bool) {
	if sb.Config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		return controller.Stats{}, false
	}
	for _, c := range cs {
		if s, ok := figures[c.ID]; ok && len(s.Interfaces) > 0 {
			return s, true
		}
	}
	return controller.Stats{}, false
}

// networkUsage is the CRI's form of a pod's interfaces: eth0 (CNI's) as
// the default one when there is one, else the first.
func networkUsage(s controller.Stats) *runtimeapi.NetworkUsage {
	nu := &runtimeapi.NetworkUsage{Timestamp: s.Timestamp.UnixNano()}
	def := 0
	for i, ifc := range s.Interfaces {
		if ifc.Name == "eth0" {
			def = i
		}
	}
	for i, ifc := range s.Interfaces {
		u := &runtimeapi.NetworkInterfaceUsage{
			Name: ifc.Name, RxBytes: &runtimeapi.UInt64Value{Value: ifc.RxBytes}, RxErrors: &runtimeapi.UInt64Value{Value: ifc.RxErrors},
			TxBytes: &runtimeapi.UInt64Value{Value: ifc.TxBytes}, TxErrors: &runtimeapi.UInt64Value{Value: ifc.TxErrors},
		}
		if i == def {
			nu.DefaultInterface = u
		} else {
			nu.Interfaces = append(nu.Interfaces, u)
		}
	}
	return nu
}

// runningByPod are the running containers of each pod of sbs, and all of
// them (whose figures a stats request wants).
func (r *Runtime) runningByPod(sbs []sandbox.Sandbox) (map[string][]sandbox.Container, []sandbox.Container) {
	byPod := map[string][]sandbox.Container{}
	for _, c := range r.store.Containers() {
		if c.Status.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
			byPod[c.SandboxID] = append(byPod[c.SandboxID], c)
		}
	}
	var wanted []sandbox.Container
	for _, sb := range sbs {
		wanted = append(wanted, byPod[sb.ID]...)
	}
	return byPod, wanted
}

func latest(t time.Time, s controller.Stats) time.Time {
	if s.Timestamp.After(t) {
		return s.Timestamp
	}
	return t
}
