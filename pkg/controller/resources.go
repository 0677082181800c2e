package controller

import (
	"fmt"
	"maps"
	"slices"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// PodResources are a pod's pod-level resources (UpdatePodSandboxResources):
// Resources are what its containers ask for in sum, Overhead what its
// RuntimeClass adds for the runtime itself (a VM's).
type PodResources struct {
	Overhead, Resources LinuxResources
}

// LinuxResources are cgroup limits in the CRI's terms; a zero field is no
// limit (quota and swap -1 as well).
type LinuxResources struct {
	CPUShares, CPUQuota, CPUPeriod int64
	Cpus, Mems                     string
	MemoryLimitBytes               int64
	// MemorySwapBytes is memory plus swap, as the CRI and OCI count it.
	MemorySwapBytes int64
	// Hugepages are limits in bytes by page size ("2MB").
	Hugepages map[string]uint64
	// Unified are cgroup v2 interface files and their values.
	Unified map[string]string
}

// defaultCFSPeriod is the kernel's CFS period, in µs.
const defaultCFSPeriod = 100000

// UnlimitedMemory is where a memory limit stops meaning anything: the
// kubelet reads a pod cgroup without a limit back as one of these (v1's
// 9223372036854771712, v2's max) and sends it again on a resize.
const UnlimitedMemory = int64(1) << 62

// Total is the limit of a cgroup that holds the whole pod: Resources plus
// Overhead. A kind the containers leave unlimited stays unlimited (as the
// kubelet's own pod cgroup does): a quota only when Resources has one, the
// overhead's converted to its period; memory and swap only when Resources
// limits them. Cpusets are Resources' (an overhead's own must agree);
// hugepage limits add up by size; unified keys are merged (a key both set
// differently is refused).
func (p PodResources) Total() (LinuxResources, error) {
	r, o := p.Resources, p.Overhead
	t := LinuxResources{Cpus: r.Cpus, Mems: r.Mems}
	if o.Cpus != "" && o.Cpus != r.Cpus || o.Mems != "" && o.Mems != r.Mems {
		return t, fmt.Errorf("overhead cpuset %q/%q differs from the pod's %q/%q: %w", o.Cpus, o.Mems, r.Cpus, r.Mems, errdefs.ErrInvalidArgument)
	}
	t.CPUShares = r.CPUShares + o.CPUShares
	t.CPUPeriod = r.CPUPeriod
	if r.CPUQuota > 0 {
		period := r.CPUPeriod
		if period <= 0 {
			period = defaultCFSPeriod
		}
		t.CPUQuota = r.CPUQuota
		if o.CPUQuota > 0 {
			op := o.CPUPeriod
			if op <= 0 {
				op = defaultCFSPeriod
			}
			t.CPUQuota += o.CPUQuota * period / op
		}
	} else if r.CPUQuota < 0 {
		t.CPUQuota = -1
	}
	if r.MemoryLimitBytes > 0 && r.MemoryLimitBytes < UnlimitedMemory {
		t.MemoryLimitBytes = r.MemoryLimitBytes + max(o.MemoryLimitBytes, 0)
		if r.MemorySwapBytes > 0 {
			t.MemorySwapBytes = r.MemorySwapBytes + max(o.MemorySwapBytes, o.MemoryLimitBytes, 0)
		}
	}
	if len(r.Hugepages) > 0 {
		t.Hugepages = maps.Clone(r.Hugepages)
		for size, l := range o.Hugepages {
			if _, ok := t.Hugepages[size]; ok {
				t.Hugepages[size] += l
			}
		}
	}
	if len(r.Unified)+len(o.Unified) > 0 {
		t.Unified = maps.Clone(r.Unified)
		if t.Unified == nil {
			t.Unified = map[string]string{}
		}
		for k, v := range o.Unified {
			if cur, ok := t.Unified[k]; ok && cur != v {
				return t, fmt.Errorf("unified key %q is %q in the resources and %q in the overhead: %w", k, cur, v, errdefs.ErrInvalidArgument)
			}
			t.Unified[k] = v
		}
	}
	return t, nil
}

// OCI is l as an OCI LinuxResources (what PodService.UpdatePodResources
// takes): the fields with a limit, and nothing else.
func (l LinuxResources) OCI() *specs.LinuxResources {
	out := &specs.LinuxResources{}
	cpu := specs.LinuxCPU{Cpus: l.Cpus, Mems: l.Mems}
	if l.CPUShares > 0 {
		v := uint64(l.CPUShares)
		cpu.Shares = &v
	}
	if l.CPUQuota > 0 {
		v := l.CPUQuota
		cpu.Quota = &v
	}
	if l.CPUPeriod > 0 {
		v := uint64(l.CPUPeriod)
		cpu.Period = &v
	}
	if cpu != (specs.LinuxCPU{}) {
		out.CPU = &cpu
	}
	if l.MemoryLimitBytes > 0 && l.MemoryLimitBytes < UnlimitedMemory {
		mem := &specs.LinuxMemory{}
		v := l.MemoryLimitBytes
		mem.Limit = &v
		if l.MemorySwapBytes > 0 {
			sw := l.MemorySwapBytes
			mem.Swap = &sw
		}
		out.Memory = mem
	}
	for _, size := range slices.Sorted(maps.Keys(l.Hugepages)) {
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: size, Limit: l.Hugepages[size]})
	}
	if len(l.Unified) > 0 {
		out.Unified = maps.Clone(l.Unified)
	}
	return out
}
