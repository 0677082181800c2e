package daemon

import (
	"context"

	"google.golang.org/grpc"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/vms"
)

// addVMs starts the VmService: microVMs under QEMU (KVM where it can boot
// the guest, TCG otherwise), with their state beside the cells' (vms.db,
// vms/<id>/). A host without QEMU still serves it: Start then fails with
// FailedPrecondition. When the service cannot open its state, auraed serves
// everything else and logs why VmService is missing.
func (d *Daemon) addVMs(ctx context.Context, cfg Config) {
	svc, err := vms.NewService(ctx, vms.Config{StateDir: cfg.StateDir, CgroupRoot: cfg.CgroupRoot, Templates: cfg.VMTemplates, PoolSize: cfg.VMPoolSize, Logger: cfg.Logger})
	if err != nil {
		cfg.Logger.Error("VmService not served", "error", err)
		return
	}
	d.vms = svc
	d.close = append(d.close, svc.Close)
	d.extra = append(d.extra, func(s *grpc.Server) { vmsv0.RegisterVmServiceServer(s, svc) })
}
