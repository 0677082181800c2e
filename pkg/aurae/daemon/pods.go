package daemon

import (
	"context"
	"fmt"
	"path"
	"path/filepath"

	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
)

// addPods starts the PodService: pods of OCI containers run by runc under
// conmon, with their state beside the cells'.
func (d *Daemon) addPods(ctx context.Context, cfg Config) error {
	svc, err := pods.NewService(ctx, pods.Config{
		StateDir: filepath.Join(cfg.StateDir, "pods"),
		// Below the cells' root but apart from every cell: cell names
		// cannot start with '.'.
		CgroupRoot:      path.Join(cfg.CgroupRoot, ".pods"),
		Runtime:         cfg.OCIRuntime,
		AllowOldRuntime: cfg.AllowOldOCIRuntime,
		CgroupDriver:    cfg.CgroupDriver,
		Logger:          cfg.Logger,
		// A pod RunCell made leaves its rootfs snapshots to release.
		Freed: func(ctx context.Context, podID string) error {
			if d.core == nil {
				return nil
			}
			return d.core.CellFreed(ctx, podID)
		},
	})
	if err != nil {
		return fmt.Errorf("start pod service: %w", err)
	}
	d.pods = svc
	d.close = append(d.close, svc.Close)
	d.extra = append(d.extra, func(s *grpc.Server) { podsv0.RegisterPodServiceServer(s, svc) })
	return nil
}
