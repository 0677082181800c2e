package ocispec

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// OOM score bounds of the kernel.
const (
	oomScoreAdjMin = -1000
	oomScoreAdjMax = 1000
)

// setResources sets the cgroup limits of Config.Linux.Resources (cpu shares,
// quota and period, cpuset, memory, swap where the host accounts it) and
// Input.PidsLimit, and the OOM score: the request's, clamped to no lower
// than Input.OOMScoreAdjMin (containerd's restrict_oom_score_adj; a process
// without CAP_SYS_RESOURCE cannot lower it, and runc would then fail).
// Hugepage limits and unified (cgroup v2) keys are ignored.
func setResources(in Input, s *specs.Spec) error {
	r := in.Config.GetLinux().GetResources()

	adj := max(int(r.GetOomScoreAdj()), in.Pod.OOMScoreAdjMin)
	if adj < oomScoreAdjMin || adj > oomScoreAdjMax {
		return invalid("oom_score_adj %d is out of [%d, %d]", adj, oomScoreAdjMin, oomScoreAdjMax)
	}
	s.Process.OOMScoreAdj = &adj

	if in.PidsLimit > 0 {
		s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &in.PidsLimit}
	}
	if r == nil {
		return nil
	}

	var cpu specs.LinuxCPU
	if v := r.GetCpuShares(); v != 0 {
		if v < 0 {
			return invalid("cpu shares %d is negative", v)
		}
		shares := uint64(v)
		cpu.Shares = &shares
	}
	if v := r.GetCpuQuota(); v != 0 {
		cpu.Quota = &v
	}
	if v := r.GetCpuPeriod(); v != 0 {
		if v < 0 {
			return invalid("cpu period %d is negative", v)
		}
		period := uint64(v)
		cpu.Period = &period
	}
	cpu.Cpus, cpu.Mems = r.GetCpusetCpus(), r.GetCpusetMems()
	if cpu != (specs.LinuxCPU{}) {
		s.Linux.Resources.CPU = &cpu
	}

	var mem specs.LinuxMemory
	if v := r.GetMemoryLimitInBytes(); v != 0 {
		if v < 0 {
			return invalid("memory limit %d is negative", v)
		}
		mem.Limit = &v
		if in.SwapAccounting {
			// memory+swap = memory: no swapping unless a swap limit is asked for.
			swap := v
			mem.Swap = &swap
		}
	}
	if v := r.GetMemorySwapLimitInBytes(); v != 0 && in.SwapAccounting {
		mem.Swap = &v
	}
	if mem != (specs.LinuxMemory{}) {
		s.Linux.Resources.Memory = &mem
	}
	return nil
}
