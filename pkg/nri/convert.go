package nri

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"

	api "github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// podOf is a pod as NRI plugins see it.
func podOf(sb sandbox.Sandbox) *api.PodSandbox {
	md := sb.Config.GetMetadata()
	linux := sb.Config.GetLinux()
	p := &api.PodSandbox{
		Id:             sb.ID,
		Name:           md.GetName(),
		Uid:            md.GetUid(),
		Namespace:      md.GetNamespace(),
		Labels:         maps.Clone(sb.Config.GetLabels()),
		Annotations:    maps.Clone(sb.Config.GetAnnotations()),
		RuntimeHandler: sb.RuntimeHandler,
		Ips:            slices.Clone(sb.Status.IPs),
		Linux: &api.LinuxPodSandbox{
			CgroupParent: linux.GetCgroupParent(),
			CgroupsPath:  sb.Status.CgroupPath,
		},
	}
	if sb.Status.NetNSPath != "" {
		p.Linux.Namespaces = append(p.Linux.Namespaces, &api.LinuxNamespace{Type: string(specs.NetworkNamespace), Path: sb.Status.NetNSPath})
	}
	if sb.Status.UserNSPath != "" {
		p.Linux.Namespaces = append(p.Linux.Namespaces, &api.LinuxNamespace{Type: string(specs.UserNamespace), Path: sb.Status.UserNSPath})
	}
	if res := linux.GetResources(); res != nil {
		p.Linux.PodResources = criResources(res)
	}
	if res := linux.GetOverhead(); res != nil {
		p.Linux.PodOverhead = criResources(res)
	}
	return p
}

func criResources(r *runtimeapi.LinuxContainerResources) *api.LinuxResources {
	out := &api.LinuxResources{Memory: &api.LinuxMemory{}, Cpu: &api.LinuxCPU{Cpus: r.GetCpusetCpus(), Mems: r.GetCpusetMems()}}
	if v := r.GetMemoryLimitInBytes(); v > 0 {
		out.Memory.Limit = api.Int64(v)
	}
	if v := r.GetCpuShares(); v > 0 {
		out.Cpu.Shares = api.UInt64(uint64(v))
	}
	if v := r.GetCpuQuota(); v != 0 {
		out.Cpu.Quota = api.Int64(v)
	}
	if v := r.GetCpuPeriod(); v > 0 {
		out.Cpu.Period = api.UInt64(uint64(v))
	}
	return out
}

// containerOf is a container as NRI plugins see it: its metadata from the
// CRI request, the rest from its OCI spec.
func containerOf(c sandbox.Container, spec *specs.Spec) *api.Container {
	ctr := &api.Container{
		Id:           c.ID,
		PodSandboxId: c.SandboxID,
		Name:         c.Config.GetMetadata().GetName(),
		State:        stateOf(c.Status.State),
		Labels:       maps.Clone(c.Config.GetLabels()),
		Annotations:  maps.Clone(c.Config.GetAnnotations()),
		Pid:          uint32(max(c.Status.Pid, 0)), //nolint:gosec // a pid fits
		CreatedAt:    c.CreatedAt.UnixNano(),
		ExitCode:     c.Status.ExitCode,
		StatusReason: c.Status.Reason,
	}
	if !c.Status.StartedAt.IsZero() {
		ctr.StartedAt = c.Status.StartedAt.UnixNano()
	}
	if !c.Status.FinishedAt.IsZero() {
		ctr.FinishedAt = c.Status.FinishedAt.UnixNano()
	}
	if spec == nil {
		return ctr
	}
	if spec.Annotations != nil {
		ctr.Annotations = maps.Clone(spec.Annotations)
	}
	if p := spec.Process; p != nil {
		ctr.Args = slices.Clone(p.Args)
		ctr.Env = slices.Clone(p.Env)
		for _, rl := range p.Rlimits {
			ctr.Rlimits = append(ctr.Rlimits, &api.POSIXRlimit{Type: rl.Type, Hard: rl.Hard, Soft: rl.Soft})
		}
		ctr.User = &api.User{Uid: p.User.UID, Gid: p.User.GID, AdditionalGids: slices.Clone(p.User.AdditionalGids)}
	}
	ctr.Mounts = api.FromOCIMounts(spec.Mounts)
	ctr.Hooks = api.FromOCIHooks(spec.Hooks)
	if l := spec.Linux; l != nil {
		ctr.Linux = &api.LinuxContainer{
			Namespaces:  api.FromOCILinuxNamespaces(l.Namespaces),
			Devices:     api.FromOCILinuxDevices(l.Devices),
			Resources:   api.FromOCILinuxResources(l.Resources, nil),
			CgroupsPath: l.CgroupsPath,
			Sysctl:      maps.Clone(l.Sysctl),
		}
		if spec.Process != nil && spec.Process.OOMScoreAdj != nil {
			ctr.Linux.OomScoreAdj = api.Int(*spec.Process.OOMScoreAdj)
		}
	}
	return ctr
}

// containerWithSpec decodes the container's kept spec for containerOf; a
// spec that does not decode leaves the container without its details.
func containerWithSpec(c sandbox.Container) *api.Container {
	var spec specs.Spec
	if err := json.Unmarshal(c.Spec, &spec); err != nil {
		return containerOf(c, nil)
	}
	return containerOf(c, &spec)
}

func stateOf(s runtimeapi.ContainerState) api.ContainerState {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return api.ContainerState_CONTAINER_CREATED
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return api.ContainerState_CONTAINER_RUNNING
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return api.ContainerState_CONTAINER_STOPPED
	}
	return api.ContainerState_CONTAINER_UNKNOWN
}

// adjustmentOf is the validated adjustment in ocispec's terms; nil when it
// changes nothing.
func adjustmentOf(a *api.ContainerAdjustment, by string) *ocispec.Adjustment {
	if a == nil {
		return nil
	}
	out := &ocispec.Adjustment{By: by, Args: slices.Clone(a.Args)}
	for k, v := range a.Annotations {
		if name, ok := api.IsMarkedForRemoval(k); ok {
			out.RemoveAnnotations = append(out.RemoveAnnotations, name)
			continue
		}
		if out.Annotations == nil {
			out.Annotations = map[string]string{}
		}
		out.Annotations[k] = v
	}
	for _, kv := range a.Env {
		if name, ok := kv.IsMarkedForRemoval(); ok {
			out.RemoveEnv = append(out.RemoveEnv, name)
			continue
		}
		out.Env = append(out.Env, kv.ToOCI())
	}
	for _, m := range a.Mounts {
		if dst, ok := m.IsMarkedForRemoval(); ok {
			out.RemoveMounts = append(out.RemoveMounts, dst)
			continue
		}
		out.Mounts = append(out.Mounts, m.ToOCI(nil))
	}
	if h := a.Hooks; h != nil {
		out.Hooks = &specs.Hooks{
			Prestart:      hooksOf(h.Prestart), //nolint:staticcheck // deprecated, still a hook runc runs and NRI passes
			CreateRuntime: hooksOf(h.CreateRuntime), CreateContainer: hooksOf(h.CreateContainer),
			StartContainer: hooksOf(h.StartContainer), Poststart: hooksOf(h.Poststart), Poststop: hooksOf(h.Poststop),
		}
	}
	for _, rl := range a.Rlimits {
		out.Rlimits = append(out.Rlimits, specs.POSIXRlimit{Type: rl.Type, Hard: rl.Hard, Soft: rl.Soft})
	}
	if l := a.Linux; l != nil {
		for _, d := range l.Devices {
			if p, ok := d.IsMarkedForRemoval(); ok {
				out.RemoveDevices = append(out.RemoveDevices, p)
				continue
			}
			out.Devices = append(out.Devices, d.ToOCI())
			major, minor := d.Major, d.Minor
			out.DeviceRules = append(out.DeviceRules, specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: d.AccessString()})
		}
		if l.Resources != nil {
			out.Resources = l.Resources.ToOCI()
			if emptyResources(out.Resources) {
				out.Resources = nil
			}
		}
		if l.OomScoreAdj != nil {
			v := int(l.OomScoreAdj.GetValue())
			out.OOMScoreAdj = &v
		}
	}
	if isEmpty(out) {
		return nil
	}
	return out
}

func hooksOf(hs []*api.Hook) []specs.Hook {
	var out []specs.Hook
	for _, h := range hs {
		out = append(out, h.ToOCI())
	}
	return out
}

// emptyResources tells a LinuxResources that sets nothing (NRI's ToOCI
// always makes the memory and CPU parts).
func emptyResources(r *specs.LinuxResources) bool {
	m, c := r.Memory, r.CPU
	return (m == nil || *m == specs.LinuxMemory{}) && (c == nil || *c == specs.LinuxCPU{}) &&
		len(r.HugepageLimits) == 0 && len(r.Unified) == 0 && len(r.Devices) == 0 && r.Pids == nil && r.BlockIO == nil
}

func isEmpty(a *ocispec.Adjustment) bool {
	return len(a.Annotations)+len(a.RemoveAnnotations)+len(a.Env)+len(a.RemoveEnv)+len(a.Args)+len(a.Mounts)+
		len(a.RemoveMounts)+len(a.Devices)+len(a.RemoveDevices)+len(a.Rlimits) == 0 &&
		a.Resources == nil && a.Hooks == nil && a.OOMScoreAdj == nil
}

// pluginList names the plugins of an adjustment for errors and logs.
func pluginList(names map[string]bool) string {
	out := slices.Sorted(maps.Keys(names))
	if len(out) == 0 {
		return "NRI plugins"
	}
	return "NRI plugin " + strings.Join(out, ", ")
}
