package legacy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// The size of a VM RunVirtualMachine boots (the seed's message has none).
const (
	runVMMemMiB = 512
	runVMVCPUs  = 1
)

// VMs is the VmService RunVirtualMachine boots its VMs with.
type VMs interface {
	Create(context.Context, *vmsv0.VmServiceCreateRequest) (*vmsv0.VmServiceCreateResponse, error)
	Start(context.Context, *vmsv0.VmServiceStartRequest) (*vmsv0.VmServiceStartResponse, error)
	Free(context.Context, *vmsv0.VmServiceFreeRequest) (*vmsv0.VmServiceFreeResponse, error)
}

// WithVMs lets Core boot VMs from the guest image in imageDir; without it
// RunVirtualMachine answers FailedPrecondition.
func (s *Core) WithVMs(vms VMs, imageDir string) *Core {
	s.vms, s.vmImageDir = vms, imageDir
	return s
}

// RunVirtualMachine creates and boots a VM from auraed's guest image.
func (s *Core) RunVirtualMachine(ctx context.Context, req *runtimeapi.VirtualMachine) (*runtimeapi.VirtualMachineStatus, error) {
	resp, err := s.runVM(ctx, req)
	return resp, errmap.ToGRPC(err)
}

func (s *Core) runVM(ctx context.Context, req *runtimeapi.VirtualMachine) (_ *runtimeapi.VirtualMachineStatus, retErr error) {
	id := req.GetName()
	if id == "" {
		id = req.GetMeta().GetName()
	}
	if id == "" {
		return nil, fmt.Errorf("virtual machine: name (or meta.name) is empty: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetImage() != "" {
		return nil, fmt.Errorf("virtual machine %q: image %q: auraed pulls no VM images; leave image empty to boot its guest image (make vm-image): %w", id, req.GetImage(), errdefs.ErrFailedPrecondition)
	}
	if s.vms == nil {
		return nil, fmt.Errorf("virtual machine %q: auraed serves no VmService (see its log for why): %w", id, errdefs.ErrFailedPrecondition)
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		p := filepath.Join(s.vmImageDir, f)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("virtual machine %q: no guest image: %s is missing (make vm-image, or auraed --vm-image-dir): %w", id, p, errdefs.ErrFailedPrecondition)
		} else if err != nil {
			return nil, fmt.Errorf("virtual machine %q: guest image: %w", id, err)
		}
	}
	m := &vmsv0.VirtualMachine{Id: id, VcpuCount: runVMVCPUs, MemSizeMb: runVMMemMiB, KernelImgPath: filepath.Join(s.vmImageDir, "vmlinux")}
	if _, err := s.vms.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: m}); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freeTimeout)
			defer cancel()
			_, _ = s.vms.Free(fctx, &vmsv0.VmServiceFreeRequest{VmId: id})
		}
	}()
	started, err := s.vms.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: id})
	if err != nil {
		return nil, err
	}
	return &runtimeapi.VirtualMachineStatus{
		Meta:   &metaapi.AuraeMeta{Name: id, Message: "auraed at " + started.GetAuraedAddress()},
		Status: metaapi.Status_STATUS_ACTIVE,
	}, nil
}
