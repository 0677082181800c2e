// Package vms serves the Aurae VmService (aurae.vms.v0): microVMs run by a
// hypervisor (pkg/hypervisor: QEMU by default) as processes of their own,
// which outlive auraed; a restarted auraed adopts them again.
//
// State dir layout:
//
//	vms.db                  bbolt: one record per VM (spec and status)
//	vms/<id>/config.json    the VM's spec (protojson)
//	vms/<id>/qmp.sock       QEMU's QMP socket
//	vms/<id>/aurae.sock     the guest auraed's channel (virtio-serial port aurae.0)
//	vms/<id>/console.log    the guest's serial console
//	vms/<id>/hypervisor.pid, hypervisor.log
//	vms/.pool-<n>/          a pooled VM's dir (pool.go)
//	vms/.accel/             the KVM probe's results, per kernel hash
//	vm-templates/           VM templates (templates.go)
//
// The guest's initramfs is Config.Initramfs, or else initramfs.cpio.gz
// beside the VM's kernel when it exists (what `make vm-image` puts in
// /var/lib/aurae/vm); with neither, the kernel boots without one.
package vms

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// Config configures the service.
type Config struct {
	// StateDir holds vms.db and vms/<id>/.
	StateDir string
	// CgroupRoot is auraed's cgroup root: a VM's cgroup_path must be below.
	CgroupRoot string
	// Hypervisor is "qemu" (default), "cloud-hypervisor" or "firecracker".
	Hypervisor string
	// HypervisorBinary overrides the hypervisor's binary.
	HypervisorBinary string
	// Accelerator is "" or "auto" (probe KVM with a real boot, else TCG),
	// "kvm" or "tcg".
	Accelerator string
	// Initramfs is the guest's initramfs for every VM; empty uses
	// initramfs.cpio.gz beside the VM's kernel when it exists.
	Initramfs string
	// BootTimeout bounds a boot (until the guest's first console output);
	// a boot that times out is retried once. Default 60 s.
	BootTimeout time.Duration
	// StopTimeout is how long Stop waits for the guest to power down after
	// the ACPI power button before it quits the hypervisor. Default 10 s.
	StopTimeout time.Duration
	// UIDBase and UIDCount are the ids a VM's hypervisor runs as: each VM
	// gets a user and group of its own, UIDBase+n, that no host user has.
	// Default 2147418112 (0x7fff0000), 65536 of them.
	UIDBase, UIDCount uint32
	// Templates starts VMs from VM templates where the hypervisor can (see
	// templates.go): QEMU's q35 machine, VMs without drives. The last user
	// of the range is the template makers'.
	Templates bool
	// PoolSize, with Templates, keeps that many clones of the template last
	// started from running idle, ready to become VMs (pool.go; Kata's VM
	// cache). 0: no pool.
	PoolSize int
	Logger   *slog.Logger
}

// The default range of hypervisor users: far above the ranges the kubelet
// hands to user-namespaced pods (65536 each, from 65536 up).
const (
	defaultUIDBase  = 0x7fff0000
	defaultUIDCount = 65536
)

var _ vmsv0.VmServiceServer = (*Service)(nil)

// Service implements vmsv0.VmServiceServer.
type Service struct {
	vmsv0.UnimplementedVmServiceServer

	cfg   Config
	log   *slog.Logger
	hv    hypervisor.Hypervisor
	accel hypervisor.Accel
	store *store
	// tpl is nil when templates are off.
	tpl *templates
	// pool is nil without templates or with Config.PoolSize 0.
	pool *vmPool

	closed   atomic.Bool
	watchCtx context.Context
	unwatch  context.CancelFunc
	wg       sync.WaitGroup // watchers

	mu  sync.RWMutex
	vms map[string]*vm
}

// NewService opens the state and reconciles it with the machine: VMs whose
// hypervisor still runs (same pid and start time, control socket answering)
// are adopted; the others are marked stopped.
func NewService(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("vms: state dir is empty: %w", errdefs.ErrInvalidArgument)
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("vms: state dir: %w", err)
	}
	cfg.StateDir = dir
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 60 * time.Second
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase, cfg.UIDCount = defaultUIDBase, defaultUIDCount
	}
	if cfg.UIDCount == 0 || uint64(cfg.UIDBase)+uint64(cfg.UIDCount) > 1<<32-1 {
		return nil, fmt.Errorf("vms: hypervisor users %d+%d: out of range: %w", cfg.UIDBase, cfg.UIDCount, errdefs.ErrInvalidArgument)
	}
	if cfg.PoolSize < 0 || cfg.PoolSize > maxPoolSize {
		return nil, fmt.Errorf("vms: vm pool size %d: want 0 to %d: %w", cfg.PoolSize, maxPoolSize, errdefs.ErrInvalidArgument)
	}
	accel, err := hypervisor.ParseAccel(cfg.Accelerator)
	if err != nil {
		return nil, fmt.Errorf("vms: %w", err)
	}
	hv, err := hypervisor.New(cfg.Hypervisor, hypervisor.Options{
		Binary:   cfg.HypervisorBinary,
		CacheDir: filepath.Join(cfg.StateDir, "vms", ".accel"),
	})
	if err != nil {
		return nil, fmt.Errorf("vms: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "vms"), 0o700); err != nil {
		return nil, fmt.Errorf("vms: state dir: %w", err)
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	wctx, unwatch := context.WithCancel(context.Background())
	s := &Service{cfg: cfg, log: cfg.Logger, hv: hv, accel: accel, store: st, watchCtx: wctx, unwatch: unwatch, vms: map[string]*vm{}}
	if err := s.recover(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("recover vms: %w", err)
	}
	if tm, ok := hv.(templater); ok && cfg.Templates {
		if s.tpl, err = newTemplates(cfg.StateDir, tm, cfg.UIDBase+cfg.UIDCount-1, guestReady, s.log); err != nil {
			_ = s.Close()
			return nil, err
		}
		s.tpl.cleanup(ctx, s.killStrayHypervisor)
		if _, ok := hv.(attacher); ok && cfg.PoolSize > 0 {
			s.pool = &vmPool{size: cfg.PoolSize, users: map[uint32]bool{}}
		}
	}
	// Pooled VMs are never adopted: what an earlier auraed left goes.
	s.cleanupPool(ctx)
	return s, nil
}

// Close stops watching VMs and releases the state file. The VMs keep
// running.
func (s *Service) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.unwatch()
	// No filler starts once the pool is closed; the running one ends with
	// the watch context.
	idle := s.closePool()
	s.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pv := range idle {
		s.discardPooled(ctx, pv, "auraed stops")
	}
	return s.store.close()
}

func (s *Service) vmDir(id string) string { return filepath.Join(s.cfg.StateDir, "vms", id) }

func (s *Service) lookup(id string) (*vm, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.vms[id]
	if !ok || v.reserved {
		return nil, fmt.Errorf("vm %q: %w", id, errdefs.ErrNotFound)
	}
	return v, nil
}

// Create implements VmService.Create.
func (s *Service) Create(ctx context.Context, req *vmsv0.VmServiceCreateRequest) (*vmsv0.VmServiceCreateResponse, error) {
	id, err := s.create(ctx, req.GetMachine())
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &vmsv0.VmServiceCreateResponse{VmId: id}, nil
}

// Allocate implements VmService.Allocate, Aurae's name for Create.
func (s *Service) Allocate(ctx context.Context, req *vmsv0.VmServiceCreateRequest) (*vmsv0.VmServiceCreateResponse, error) {
	return s.Create(ctx, req)
}

// Start implements VmService.Start.
func (s *Service) Start(ctx context.Context, req *vmsv0.VmServiceStartRequest) (*vmsv0.VmServiceStartResponse, error) {
	if err := validID(req.GetVmId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	addr, err := s.start(ctx, req.GetVmId())
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &vmsv0.VmServiceStartResponse{AuraedAddress: addr}, nil
}

// Stop implements VmService.Stop. Stopping an unknown or stopped VM
// succeeds.
func (s *Service) Stop(ctx context.Context, req *vmsv0.VmServiceStopRequest) (*vmsv0.VmServiceStopResponse, error) {
	if err := validID(req.GetVmId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if err := s.stop(ctx, req.GetVmId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &vmsv0.VmServiceStopResponse{}, nil
}

// Free implements VmService.Free: stop, then remove the VM's state. Freeing
// an unknown VM succeeds.
func (s *Service) Free(ctx context.Context, req *vmsv0.VmServiceFreeRequest) (*vmsv0.VmServiceFreeResponse, error) {
	if err := validID(req.GetVmId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if err := s.free(ctx, req.GetVmId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &vmsv0.VmServiceFreeResponse{}, nil
}

// List implements VmService.List, from memory.
func (s *Service) List(ctx context.Context, _ *vmsv0.VmServiceListRequest) (*vmsv0.VmServiceListResponse, error) {
	return &vmsv0.VmServiceListResponse{Machines: s.list()}, nil
}
