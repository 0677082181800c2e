package controller

import (
	"testing"

	"github.com/containerd/errdefs"
)

func TestPodResourcesTotal(t *testing.T) {
	p := PodResources{
		Overhead:  LinuxResources{CPUShares: 256, CPUQuota: 25000, CPUPeriod: 100000, MemoryLimitBytes: 64 << 20},
		Resources: LinuxResources{CPUShares: 1536, CPUQuota: 75000, CPUPeriod: 50000, MemoryLimitBytes: 256 << 20, Cpus: "0"},
	}
	got, err := p.Total()
	if err != nil {
		t.Fatal(err)
	}
	// The overhead's 25000/100000 is 12500 per the pods' 50000 period.
	if got.CPUShares != 1792 || got.CPUQuota != 87500 || got.CPUPeriod != 50000 || got.MemoryLimitBytes != 320<<20 || got.Cpus != "0" {
		t.Errorf("total %+v", got)
	}
	// Containers without limits leave the pod without: no quota, no memory
	// limit, whatever the overhead (the kubelet's "unlimited" read back).
	p.Resources = LinuxResources{CPUShares: 2, CPUQuota: -1, CPUPeriod: 100000, MemoryLimitBytes: UnlimitedMemory + 1}
	if got, err = p.Total(); err != nil || got.CPUQuota != -1 || got.MemoryLimitBytes != 0 || got.CPUShares != 258 {
		t.Errorf("unlimited total %+v %v", got, err)
	}
	if oci := got.OCI(); oci.Memory != nil || oci.CPU.Quota != nil {
		t.Errorf("unlimited OCI %+v", oci)
	}
	p.Overhead.Cpus = "1"
	p.Resources.Cpus = "0"
	if _, err := p.Total(); !errdefs.IsInvalidArgument(err) {
		t.Errorf("overhead with another cpuset: %v", err)
	}
}
