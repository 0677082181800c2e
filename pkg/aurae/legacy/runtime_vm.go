package legacy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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

// spawnPrefix marks the VMs of Spawn: removed once they exit.
const spawnPrefix = "spawn-"

// VMs is the VmService RunVirtualMachine and Spawn boot their VMs with.
type VMs interface {
	Create(context.Context, *vmsv0.VmServiceCreateRequest) (*vmsv0.VmServiceCreateResponse, error)
	Start(context.Context, *vmsv0.VmServiceStartRequest) (*vmsv0.VmServiceStartResponse, error)
	Free(context.Context, *vmsv0.VmServiceFreeRequest) (*vmsv0.VmServiceFreeResponse, error)
	List(context.Context, *vmsv0.VmServiceListRequest) (*vmsv0.VmServiceListResponse, error)
	WaitStopped(ctx context.Context, id string) error
}

// WithVMs lets Core boot VMs from the guest image in imageDir (without it
// RunVirtualMachine and Spawn answer FailedPrecondition), and removes the
// spawned VMs that exited while auraed was away or exit from now on.
func (s *Core) WithVMs(ctx context.Context, vms VMs, imageDir string, log *slog.Logger) *Core {
	s.vms, s.vmImageDir, s.log = vms, imageDir, log
	s.reapCtx, s.stopReaping = context.WithCancel(context.WithoutCancel(ctx))
	if list, err := vms.List(ctx, &vmsv0.VmServiceListRequest{}); err != nil {
		log.Warn("list VMs to reap the spawned ones", "error", err)
	} else {
		for _, m := range list.GetMachines() {
			if strings.HasPrefix(m.GetId(), spawnPrefix) {
				s.reapWhenStopped(m.GetId())
			}
		}
	}
	return s
}

// Close stops watching the spawned VMs (they keep running; the next
// auraed watches them again).
func (s *Core) Close() error {
	if s.stopReaping != nil {
		s.stopReaping()
	}
	s.reaping.Wait()
	return nil
}

// reapWhenStopped frees the VM once its hypervisor exited.
func (s *Core) reapWhenStopped(id string) {
	s.reaping.Add(1)
	go func() {
		defer s.reaping.Done()
		if err := s.vms.WaitStopped(s.reapCtx, id); err != nil {
			return // auraed stops, or the VM is gone
		}
		ctx, cancel := context.WithTimeout(context.Background(), freeTimeout)
		defer cancel()
		if _, err := s.vms.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: id}); err != nil && !notFound(err) {
			s.log.Warn("remove a spawned instance that exited", "vm", id, "error", err)
			return
		}
		s.log.Info("spawned instance exited and was removed", "vm", id)
	}()
}

// Spawn boots a nested instance that is removed once it exits.
func (s *Core) Spawn(ctx context.Context, _ *runtimeapi.SpawnRequest) (*runtimeapi.SpawnResponse, error) {
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	id := spawnPrefix + hex.EncodeToString(suffix)
	addr, err := s.bootVM(ctx, id)
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	s.reapWhenStopped(id)
	return &runtimeapi.SpawnResponse{VmId: id, AuraedAddress: addr}, nil
}

// RunVirtualMachine creates and boots a VM from auraed's guest image.
func (s *Core) RunVirtualMachine(ctx context.Context, req *runtimeapi.VirtualMachine) (*runtimeapi.VirtualMachineStatus, error) {
	resp, err := s.runVM(ctx, req)
	return resp, errmap.ToGRPC(err)
}

func (s *Core) runVM(ctx context.Context, req *runtimeapi.VirtualMachine) (*runtimeapi.VirtualMachineStatus, error) {
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
	addr, err := s.bootVM(ctx, id)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.VirtualMachineStatus{
		Meta:   &metaapi.AuraeMeta{Name: id, Message: "auraed at " + addr},
		Status: metaapi.Status_STATUS_ACTIVE,
	}, nil
}

// bootVM creates and starts VM id from the guest image and returns where
// its auraed answers; a VM that fails to boot is freed.
func (s *Core) bootVM(ctx context.Context, id string) (_ string, retErr error) {
	if s.vms == nil {
		return "", fmt.Errorf("virtual machine %q: auraed serves no VmService (see its log for why): %w", id, errdefs.ErrFailedPrecondition)
	}
	if err := checkGuestImage(s.vmImageDir); err != nil {
		return "", fmt.Errorf("virtual machine %q: %w", id, err)
	}
	m := &vmsv0.VirtualMachine{Id: id, VcpuCount: runVMVCPUs, MemSizeMb: runVMMemMiB, KernelImgPath: filepath.Join(s.vmImageDir, "vmlinux")}
	if _, err := s.vms.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: m}); err != nil {
		return "", err
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
		return "", err
	}
	return started.GetAuraedAddress(), nil
}

// checkGuestImage says what of the guest image is missing from dir.
func checkGuestImage(dir string) error {
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		p := filepath.Join(dir, f)
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no guest image: %s is missing (make vm-image, or auraed --vm-image-dir): %w", p, errdefs.ErrFailedPrecondition)
		} else if err != nil {
			return fmt.Errorf("guest image: %w", err)
		}
	}
	return nil
}
