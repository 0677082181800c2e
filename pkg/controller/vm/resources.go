package vm

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// UpdatePodResources resizes a VM pod in place, within the VM it booted
// with: the VM keeps its vcpus and memory (no hotplug here), and so does
// its ".vm" cgroup's memory limit (guest memory plus the hypervisor's
// overhead).
//
//   - host: the pod's cgroup (the hypervisor's parent) gets the CPU share,
//     quota and cpuset of resources plus overhead, which bound the vcpu
//     threads; its memory stays bounded by the ".vm" leaf alone.
//   - guest: the guest's pod cell gets resources (not the overhead, which
//     is the VM's): CPU share and quota, memory and swap limits, unified
//     keys (the guest kernel's cgroups decide those).
//
// Refused (FailedPrecondition) before anything changes: a memory limit
// above the guest's memory, a CPU limit above its vcpus, hugepage limits
// (the guest has no hugepages), a pod whose VM is not running.
func (c *Controller) UpdatePodResources(ctx context.Context, podID string, res controller.PodResources) error {
	unlock := c.lockPod(podID)
	defer unlock()
	p, err := c.pod(podID)
	if err != nil {
		return err
	}
	c.mu.Lock()
	g := p.guest
	c.mu.Unlock()
	if g == nil {
		return fmt.Errorf("vm pod %s: its VM is not running: %w", podID, errdefs.ErrFailedPrecondition)
	}
	vm, err := c.machine(ctx, p.rec.VMID)
	if err != nil {
		return err
	}
	if err := fits(vm, res); err != nil {
		return fmt.Errorf("vm pod %s: %w", podID, err)
	}
	total, err := res.Total()
	if err != nil {
		return err
	}
	host := controller.LinuxResources{
		CPUShares: total.CPUShares, CPUQuota: total.CPUQuota, CPUPeriod: total.CPUPeriod,
		Cpus: total.Cpus, Mems: total.Mems,
	}
	guest := res.Resources
	guest.Cpus, guest.Mems = "", "" // the host's cpus are not the guest's
	if guest.MemoryLimitBytes >= controller.UnlimitedMemory {
		guest.MemoryLimitBytes, guest.MemorySwapBytes = 0, 0
	}
	if err := c.host.SetPodResources(ctx, podID, host.OCI()); err != nil {
		return fmt.Errorf("vm pod %s: host cgroup: %w", podID, err)
	}
	if err := g.pods.SetPodResources(ctx, podID, guest.OCI()); err != nil {
		return fmt.Errorf("vm pod %s: guest pod: %w", podID, err)
	}
	c.log.Info("vm pod resized", "pod", podID, "vm", p.rec.VMID, "vcpus", vm.GetVcpuCount(), "mem_mib", vm.GetMemSizeMb(),
		"cpu_quota", host.CPUQuota, "cpu_period", host.CPUPeriod, "guest_memory_limit", guest.MemoryLimitBytes)
	return nil
}

// machine is the VM as the host's VmService has it.
func (c *Controller) machine(ctx context.Context, vmID string) (*vmsv0.VirtualMachine, error) {
	resp, err := c.vms.List(ctx, &vmsv0.VmServiceListRequest{})
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	for _, m := range resp.GetMachines() {
		if m.GetId() == vmID {
			if m.GetState() != vmsv0.VmState_VM_STATE_RUNNING {
				return nil, fmt.Errorf("vm %s is %s: %w", vmID, m.GetState(), errdefs.ErrFailedPrecondition)
			}
			return m.GetMachine(), nil
		}
	}
	return nil, fmt.Errorf("vm %s: %w", vmID, errdefs.ErrFailedPrecondition)
}

// fits refuses what the VM cannot give without growing.
func fits(vm *vmsv0.VirtualMachine, res controller.PodResources) error {
	r := res.Resources
	if len(r.Hugepages)+len(res.Overhead.Hugepages) > 0 {
		return fmt.Errorf("hugepage limits: a VM pod's guest has no hugepages: %w", errdefs.ErrFailedPrecondition)
	}
	memBytes := int64(vm.GetMemSizeMb()) << 20
	if l := r.MemoryLimitBytes; l > memBytes && l < controller.UnlimitedMemory {
		return fmt.Errorf("memory limit %d bytes is above the %d MiB its VM has, which cannot grow without memory hotplug (recreate the pod to resize its VM): %w",
			l, vm.GetMemSizeMb(), errdefs.ErrFailedPrecondition)
	}
	if q := r.CPUQuota; q > 0 {
		period := r.CPUPeriod
		if period <= 0 {
			period = 100000
		}
		if need := (q + period - 1) / period; need > int64(vm.GetVcpuCount()) {
			return fmt.Errorf("cpu quota %d per period %d µs asks for %d CPUs, its VM has %d vcpus, which cannot grow without CPU hotplug (recreate the pod to resize its VM): %w",
				q, period, need, vm.GetVcpuCount(), errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}
