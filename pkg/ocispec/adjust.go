package ocispec

import (
	"maps"
	"path"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Adjustment is what NRI plugins (pkg/nri) change in a container at
// creation, in the spec's own terms. pkg/nri has checked who asked for
// what (and refused what a plugin may not ask); Generate applies it last,
// over the spec made from the request, and checks it again against the
// same rules it holds the request to. By names the plugins in errors.
type Adjustment struct {
	// By names who asked for it ("NRI plugin 10-foo"), for errors.
	By string

	// Annotations are set, RemoveAnnotations removed (before the set).
	Annotations       map[string]string
	RemoveAnnotations []string
	// Env are KEY=VALUE, replacing the variable of the same name;
	// RemoveEnv are names removed.
	Env       []string
	RemoveEnv []string
	// Args, when set, replace the process's arguments.
	Args []string
	// Mounts replace any mount at the same destination; RemoveMounts are
	// destinations whose mounts go. Only bind mounts (rbind or bind, of an
	// absolute source) and tmpfs mounts are taken.
	Mounts       []specs.Mount
	RemoveMounts []string
	// Devices are device nodes made in the container, DeviceRules the
	// device cgroup rules that allow them; RemoveDevices are paths.
	Devices       []specs.LinuxDevice
	DeviceRules   []specs.LinuxDeviceCgroup
	RemoveDevices []string
	// Resources are the cgroup limits set (a nil field keeps the spec's):
	// memory, CPU, hugepages and pids only.
	Resources *specs.LinuxResources
	// Hooks are appended to the spec's OCI hooks.
	Hooks *specs.Hooks
	// Rlimits replace the limit of the same type.
	Rlimits []specs.POSIXRlimit
	// OOMScoreAdj, when set, replaces the process's; it must be no lower
	// than PodFacts.OOMScoreAdjMin.
	OOMScoreAdj *int
}

// adjusted names what an adjustment's error comes from.
func (a *Adjustment) by() string {
	if a.By == "" {
		return "NRI adjustment"
	}
	return a.By
}

// applyAdjustment applies in.Adjustment to s: the last step of Generate.
func applyAdjustment(in Input, s *specs.Spec) error {
	a := in.Adjustment
	if a == nil {
		return nil
	}
	by := a.by()
	for _, k := range a.RemoveAnnotations {
		if isCRIAnnotation(k) {
			return invalid("%s: annotations: %q is the runtime's own", by, k)
		}
		delete(s.Annotations, k)
	}
	for k := range a.Annotations {
		if k == "" || isCRIAnnotation(k) {
			return invalid("%s: annotations: %q is empty or the runtime's own", by, k)
		}
	}
	if len(a.Annotations) > 0 && s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	maps.Copy(s.Annotations, a.Annotations)

	// A name without "=" removes it.
	overrides := append(make([]string, 0, len(a.RemoveEnv)+len(a.Env)), a.RemoveEnv...)
	for _, kv := range a.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return invalid("%s: env: %q is not KEY=VALUE", by, kv)
		}
		overrides = append(overrides, kv)
	}
	if len(overrides) > 0 {
		s.Process.Env = mergeEnv(s.Process.Env, overrides)
	}
	if len(a.Args) > 0 {
		s.Process.Args = slices.Clone(a.Args)
	}
	if err := adjustMounts(in, a, s); err != nil {
		return err
	}
	if err := adjustDevices(a, s); err != nil {
		return err
	}
	if err := adjustResources(a, s); err != nil {
		return err
	}
	if h := a.Hooks; h != nil {
		if s.Hooks == nil {
			s.Hooks = &specs.Hooks{}
		}
		for _, list := range [][]specs.Hook{h.Prestart, h.CreateRuntime, h.CreateContainer, h.StartContainer, h.Poststart, h.Poststop} { //nolint:staticcheck // Prestart is deprecated, still a hook runc runs
			for _, hk := range list {
				if !path.IsAbs(hk.Path) {
					return invalid("%s: hooks: path %q is not absolute", by, hk.Path)
				}
			}
		}
		s.Hooks.Prestart = append(s.Hooks.Prestart, h.Prestart...) //nolint:staticcheck // as above
		s.Hooks.CreateRuntime = append(s.Hooks.CreateRuntime, h.CreateRuntime...)
		s.Hooks.CreateContainer = append(s.Hooks.CreateContainer, h.CreateContainer...)
		s.Hooks.StartContainer = append(s.Hooks.StartContainer, h.StartContainer...)
		s.Hooks.Poststart = append(s.Hooks.Poststart, h.Poststart...)
		s.Hooks.Poststop = append(s.Hooks.Poststop, h.Poststop...)
	}
	for _, rl := range a.Rlimits {
		if !strings.HasPrefix(rl.Type, "RLIMIT_") || rl.Soft > rl.Hard {
			return invalid("%s: rlimits: %s soft %d hard %d is not a valid limit", by, rl.Type, rl.Soft, rl.Hard)
		}
		s.Process.Rlimits = slices.DeleteFunc(s.Process.Rlimits, func(o specs.POSIXRlimit) bool { return o.Type == rl.Type })
		s.Process.Rlimits = append(s.Process.Rlimits, rl)
	}
	if a.OOMScoreAdj != nil {
		adj := *a.OOMScoreAdj
		if adj < in.Pod.OOMScoreAdjMin || adj > oomScoreAdjMax {
			return invalid("%s: oom_score_adj %d is out of [%d, %d] (no lower than the runtime's own)", by, adj, in.Pod.OOMScoreAdjMin, oomScoreAdjMax)
		}
		s.Process.OOMScoreAdj = &adj
	}
	return nil
}

// isCRIAnnotation tells the annotations Generate sets itself: no request
// and no plugin may set or remove them.
func isCRIAnnotation(k string) bool {
	return strings.HasPrefix(k, "io.kubernetes.cri.")
}

// AdjustableMount says why a mount an NRI plugin adds cannot be taken, or
// nil: a tmpfs, or a bind mount of an absolute host path, at a valid
// container path.
func AdjustableMount(m specs.Mount) error {
	if err := validContainerPath(m.Destination); err != nil {
		return err
	}
	switch {
	case m.Type == "tmpfs":
		return nil
	case m.Type == "bind" || (m.Type == "" && (slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind"))):
		if !path.IsAbs(m.Source) || path.Clean(m.Source) != m.Source && path.Clean(m.Source)+"/" != m.Source {
			return invalid("bind mount source %q is not a clean absolute path", m.Source)
		}
		return nil
	}
	return unsupported("mount type %q (only bind and tmpfs mounts may be added)", m.Type)
}

func adjustMounts(in Input, a *Adjustment, s *specs.Spec) error {
	if len(a.Mounts) == 0 && len(a.RemoveMounts) == 0 {
		return nil
	}
	gone := map[string]bool{}
	for _, d := range a.RemoveMounts {
		gone[path.Clean(d)] = true
	}
	added := make([]specs.Mount, 0, len(a.Mounts))
	for _, m := range a.Mounts {
		if err := AdjustableMount(m); err != nil {
			return invalid("%s: mounts: at %q: %v", a.by(), m.Destination, err)
		}
		m.Destination = path.Clean(m.Destination)
		if m.Type == "" {
			m.Type = "bind"
		}
		if m.Type == "bind" {
			if !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
				m.Options = append(slices.Clone(m.Options), "rbind")
			}
			if in.Pod.MountSources != nil {
				src, ok := in.Pod.MountSources[m.Source]
				if !ok {
					return invalid("%s: mounts: at %q: host path %q is not shared with the pod (a VM pod's guest sees no host path)", a.by(), m.Destination, m.Source)
				}
				m.Source = src
			}
			if in.Pod.UserNamespace != "" {
				m.UIDMappings, m.GIDMappings = in.Pod.UIDMappings, in.Pod.GIDMappings
			}
		}
		gone[m.Destination] = true
		added = append(added, m)
	}
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return gone[path.Clean(m.Destination)] })
	s.Mounts = append(s.Mounts, added...)
	slices.SortStableFunc(s.Mounts, func(x, y specs.Mount) int { return depth(x.Destination) - depth(y.Destination) })
	return nil
}

func adjustDevices(a *Adjustment, s *specs.Spec) error {
	gone := map[string]bool{}
	for _, p := range a.RemoveDevices {
		gone[p] = true
	}
	for _, d := range a.Devices {
		if err := validContainerPath(d.Path); err != nil || !strings.HasPrefix(d.Path, "/dev/") {
			return invalid("%s: devices: %q is not a path below /dev", a.by(), d.Path)
		}
		if d.Type != "c" && d.Type != "b" && d.Type != "u" && d.Type != "p" {
			return invalid("%s: devices: %q has type %q (c, b, u or p)", a.by(), d.Path, d.Type)
		}
		gone[d.Path] = true
	}
	if len(gone) == 0 && len(a.DeviceRules) == 0 {
		return nil
	}
	s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return gone[d.Path] })
	s.Linux.Devices = append(s.Linux.Devices, a.Devices...)
	for _, r := range a.DeviceRules {
		if !r.Allow || r.Access == "" || strings.Trim(r.Access, "rwm") != "" {
			return invalid("%s: devices: cgroup rule %+v must allow r, w or m", a.by(), r)
		}
	}
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, a.DeviceRules...)
	return nil
}

func adjustResources(a *Adjustment, s *specs.Spec) error {
	r := a.Resources
	if r == nil {
		return nil
	}
	if r.BlockIO != nil || len(r.Unified) > 0 || r.Rdma != nil || r.Network != nil || len(r.Devices) > 0 {
		return unsupported("%s: linux.resources: only memory, cpu, hugepage_limits and pids may be adjusted", a.by())
	}
	if m := r.Memory; m != nil && (m.Kernel != nil || m.KernelTCP != nil) { //nolint:staticcheck // refused: deprecated by the kernel
		return unsupported("%s: linux.resources.memory: kernel and kernel_tcp limits are not supported", a.by())
	}
	if c := r.CPU; c != nil && (c.RealtimePeriod != nil || c.RealtimeRuntime != nil) {
		return unsupported("%s: linux.resources.cpu: realtime period and runtime are not supported", a.by())
	}
	if r.Pids != nil && r.Pids.Limit != nil && *r.Pids.Limit <= 0 {
		return invalid("%s: linux.resources.pids.limit %d is not positive", a.by(), *r.Pids.Limit)
	}
	s.Linux.Resources = MergeResources(s.Linux.Resources, r)
	return nil
}

// MergeResources is cur with what r sets of memory, CPU, hugepage and
// pids limits over it (a nil field of r keeps cur's); a memory+swap limit
// below the memory limit is raised to it, as a CRI update does. cur is
// not changed.
func MergeResources(cur, r *specs.LinuxResources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if cur != nil {
		*out = *cur
	}
	if r == nil {
		return out
	}
	if m := r.Memory; m != nil {
		mem := specs.LinuxMemory{}
		if out.Memory != nil {
			mem = *out.Memory
		}
		setIf(&mem.Limit, m.Limit)
		setIf(&mem.Reservation, m.Reservation)
		setIf(&mem.Swap, m.Swap)
		setIf(&mem.Swappiness, m.Swappiness)
		setIf(&mem.DisableOOMKiller, m.DisableOOMKiller)
		if l, sw := mem.Limit, mem.Swap; l != nil && sw != nil && *sw >= 0 && *sw < *l {
			mem.Swap = mem.Limit
		}
		out.Memory = &mem
	}
	if c := r.CPU; c != nil {
		cpu := specs.LinuxCPU{}
		if out.CPU != nil {
			cpu = *out.CPU
		}
		setIf(&cpu.Shares, c.Shares)
		setIf(&cpu.Quota, c.Quota)
		setIf(&cpu.Period, c.Period)
		if c.Cpus != "" {
			cpu.Cpus = c.Cpus
		}
		if c.Mems != "" {
			cpu.Mems = c.Mems
		}
		out.CPU = &cpu
	}
	if len(r.HugepageLimits) > 0 {
		limits := slices.Clone(out.HugepageLimits)
		for _, h := range r.HugepageLimits {
			limits = slices.DeleteFunc(limits, func(o specs.LinuxHugepageLimit) bool { return o.Pagesize == h.Pagesize })
			limits = append(limits, h)
		}
		out.HugepageLimits = limits
	}
	if r.Pids != nil && r.Pids.Limit != nil {
		l := *r.Pids.Limit
		out.Pids = &specs.LinuxPids{Limit: &l}
	}
	return out
}

func setIf[T any](dst **T, v *T) {
	if v != nil {
		c := *v
		*dst = &c
	}
}
