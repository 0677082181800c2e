package nri

import (
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"
	api "github.com/containerd/nri/pkg/api"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// rules are what a container's adjustments are held to: the facts of its
// pod that the plugins' requests do not carry.
type rules struct {
	// vm: the pod runs in a VM, whose guest has none of the host's paths,
	// devices or hook binaries.
	vm bool
	// oomMin is the lowest oom_score_adj the pod's runtime can give.
	oomMin int
}

// refusal is a plugin's adjustment that aurae-cri does not take; it names
// the plugin and the field, and wraps FailedPrecondition (what aurae-cri
// does not allow) or InvalidArgument (what is malformed).
func refusal(kind error, plugin, field, format string, args ...any) error {
	if plugin == "" {
		plugin = "(unknown)"
	}
	return fmt.Errorf("NRI plugin %s: %s: %s: %w", plugin, field, fmt.Sprintf(format, args...), kind)
}

// owner is the plugin that set a field, from the owners NRI tracks.
func owner(name string, ok bool) string {
	if !ok {
		return ""
	}
	return name
}

// checkAdjustment refuses what aurae-cri does not let a plugin change in
// a container at creation, naming the plugin and the field. What it lets
// through ocispec applies (and checks again).
func checkAdjustment(id string, a *api.ContainerAdjustment, o *api.OwningPlugins, r rules) error {
	if a == nil {
		return nil
	}
	pre, bad := errdefs.ErrFailedPrecondition, errdefs.ErrInvalidArgument
	for k := range a.Annotations {
		name, _ := api.IsMarkedForRemoval(k)
		if name == "" || strings.HasPrefix(name, "io.kubernetes.cri.") {
			return refusal(pre, owner(o.AnnotationOwner(id, name)), "annotations["+name+"]", "the runtime's own annotations cannot be set or removed")
		}
	}
	for _, kv := range a.Env {
		name, _ := kv.IsMarkedForRemoval()
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return refusal(bad, owner(o.EnvOwner(id, name)), "env["+name+"]", "not a variable name")
		}
	}
	for _, m := range a.Mounts {
		dst, removed := m.IsMarkedForRemoval()
		who := owner(o.MountOwner(id, dst))
		if removed {
			continue
		}
		om := m.ToOCI(nil)
		if err := ocispec.AdjustableMount(om); err != nil {
			return refusal(bad, who, "mounts["+dst+"]", "%v", err)
		}
		if r.vm && om.Type != "tmpfs" {
			return refusal(pre, who, "mounts["+dst+"]", "host path %q in a VM pod: its guest sees no host path (only tmpfs mounts may be added)", om.Source)
		}
	}
	if a.Hooks != nil && r.vm && !emptyHooks(a.Hooks) {
		return refusal(pre, owner(o.HooksOwner(id)), "hooks", "OCI hooks in a VM pod: the guest's runtime has none of the host's hook binaries")
	}
	for _, h := range allHooks(a.Hooks) {
		if !path.IsAbs(h.Path) {
			return refusal(bad, owner(o.HooksOwner(id)), "hooks", "path %q is not absolute", h.Path)
		}
	}
	for _, rl := range a.Rlimits {
		if rl.Soft > rl.Hard {
			return refusal(bad, owner(o.RlimitOwner(id, rl.Type)), "rlimits["+rl.Type+"]", "soft limit %d above hard limit %d", rl.Soft, rl.Hard)
		}
	}
	if len(a.CDIDevices) > 0 {
		return refusal(pre, owner(o.CdiDeviceOwner(id, a.CDIDevices[0].GetName())), "CDI_devices", "CDI devices from NRI plugins are not supported (ask for them in the CRI request)")
	}
	l := a.Linux
	if l == nil {
		return nil
	}
	for _, d := range l.Devices {
		p, removed := d.IsMarkedForRemoval()
		if removed {
			continue
		}
		who := owner(o.DeviceOwner(id, p))
		if r.vm {
			return refusal(pre, who, "linux.devices["+p+"]", "host device in a VM pod: its guest has none of the host's devices")
		}
		if !strings.HasPrefix(p, "/dev/") || path.Clean(p) != p {
			return refusal(bad, who, "linux.devices["+p+"]", "not a clean path below /dev")
		}
	}
	if l.OomScoreAdj != nil {
		if v := int(l.OomScoreAdj.GetValue()); v < r.oomMin || v > 1000 {
			return refusal(pre, owner(o.OomScoreAdjOwner(id)), "linux.oom_score_adj", "%d is out of [%d, 1000] (no lower than the runtime's own)", v, r.oomMin)
		}
	}
	if err := checkResources(l.Resources, func(field string) string { return resourceOwner(o, id, field) }); err != nil {
		return err
	}
	for _, f := range []struct {
		set   bool
		field string
		who   string
	}{
		{l.CgroupsPath != "", "linux.cgroups_path", owner(o.CgroupsPathOwner(id))},
		{l.IoPriority != nil, "linux.io_priority", owner(o.IOPriorityOwner(id))},
		{l.SeccompPolicy != nil, "linux.seccomp_policy", owner(o.SeccompPolicyOwner(id))},
		{len(l.Namespaces) > 0, "linux.namespaces", ""},
		{len(l.Sysctl) > 0, "linux.sysctl", ""},
		{len(l.NetDevices) > 0, "linux.net_devices", ""},
		{l.Scheduler != nil, "linux.scheduler", owner(o.LinuxSchedulerOwner(id))},
		{l.Rdt != nil, "linux.rdt", owner(o.RdtClosIDOwner(id))},
		{l.MemoryPolicy != nil, "linux.memory_policy", owner(o.MemoryPolicyOwner(id))},
	} {
		if f.set {
			return refusal(pre, f.who, f.field, "not adjustable in aurae-cri (env, args, annotations, mounts, devices, resources, hooks, rlimits and oom_score_adj are)")
		}
	}
	return nil
}

// checkResources refuses the resources aurae-cri does not let plugins set:
// only memory, CPU, hugepage and pids limits.
func checkResources(res *api.LinuxResources, who func(field string) string) error {
	if res == nil {
		return nil
	}
	pre := errdefs.ErrFailedPrecondition
	no := "not adjustable in aurae-cri (memory, cpu, hugepage_limits and pids are)"
	switch {
	case res.BlockioClass != nil:
		return refusal(pre, who("blockio_class"), "linux.resources.blockio_class", "%s", no)
	case res.RdtClass != nil:
		return refusal(pre, who("rdt_class"), "linux.resources.rdt_class", "%s", no)
	case len(res.Unified) > 0:
		return refusal(pre, who("unified"), "linux.resources.unified", "%s", no)
	case len(res.Devices) > 0:
		return refusal(pre, "", "linux.resources.devices", "device cgroup rules come with linux.devices")
	case res.Memory != nil && (res.Memory.Kernel != nil || res.Memory.KernelTcp != nil):
		return refusal(pre, who("memory.kernel"), "linux.resources.memory.kernel", "kernel memory limits are not supported")
	case res.Cpu != nil && (res.Cpu.RealtimePeriod != nil || res.Cpu.RealtimeRuntime != nil):
		return refusal(pre, who("cpu.realtime"), "linux.resources.cpu.realtime_*", "realtime scheduling limits are not supported")
	case res.Pids != nil && res.Pids.Limit <= 0:
		return refusal(errdefs.ErrInvalidArgument, who("pids"), "linux.resources.pids.limit", "%d is not positive", res.Pids.Limit)
	}
	return nil
}

func resourceOwner(o *api.OwningPlugins, id, field string) string {
	switch field {
	case "blockio_class":
		return owner(o.BlockioClassOwner(id))
	case "rdt_class":
		return owner(o.RdtClassOwner(id))
	case "memory.kernel":
		return owner(o.MemKernelLimitOwner(id))
	case "cpu.realtime":
		return owner(o.CPURealtimePeriodOwner(id))
	case "pids":
		return owner(o.PidsLimitOwner(id))
	}
	return ""
}

func emptyHooks(h *api.Hooks) bool { return len(allHooks(h)) == 0 }

func allHooks(h *api.Hooks) []*api.Hook {
	if h == nil {
		return nil
	}
	var out []*api.Hook
	for _, l := range [][]*api.Hook{h.Prestart, h.CreateRuntime, h.CreateContainer, h.StartContainer, h.Poststart, h.Poststop} {
		out = append(out, l...)
	}
	return out
}
