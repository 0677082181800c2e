package vm

import (
	"testing"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

func TestFits(t *testing.T) {
	vm := &vmsv0.VirtualMachine{VcpuCount: 2, MemSizeMb: 384}
	for name, tc := range map[string]struct {
		res controller.LinuxResources
		ok  bool
	}{
		"within":              {controller.LinuxResources{CPUQuota: 200000, CPUPeriod: 100000, MemoryLimitBytes: 384 << 20}, true},
		"no limits":           {controller.LinuxResources{CPUQuota: -1}, true},
		"kubelet's unlimited": {controller.LinuxResources{MemoryLimitBytes: 9223372036854771712}, true},
		"memory above":        {controller.LinuxResources{MemoryLimitBytes: 384<<20 + 1}, false},
		"cpus above":          {controller.LinuxResources{CPUQuota: 200001, CPUPeriod: 100000}, false},
		"default period":      {controller.LinuxResources{CPUQuota: 300000}, false},
		"hugepages":           {controller.LinuxResources{Hugepages: map[string]uint64{"2MB": 0}}, false},
	} {
		err := fits(vm, controller.PodResources{Resources: tc.res})
		if tc.ok && err != nil || !tc.ok && !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
