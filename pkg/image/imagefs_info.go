package image

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// snapshotUsage is the cached usage of a committed snapshot.
type snapshotUsage struct {
	size, inodes int64
}

// ImageFsInfo reports the snapshotter's directory and what the snapshots of
// this namespace use in it.
func (s *Service) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	size, inodes, err := s.snapshotsUsage(ctx)
	if err != nil {
		return nil, toStatus(fmt.Errorf("image fs info: %w", err))
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems: []*runtimeapi.FilesystemUsage{{
			Timestamp:  time.Now().UnixNano(),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.snapshotRoot},
			UsedBytes:  &runtimeapi.UInt64Value{Value: uint64(max(size, 0))},
			InodesUsed: &runtimeapi.UInt64Value{Value: uint64(max(inodes, 0))},
		}},
	}, nil
}

// snapshotsUsage adds up the usage of every snapshot of the namespace.
// Committed snapshots never change, so their usage is asked once.
func (s *Service) snapshotsUsage(ctx context.Context) (size, inodes int64, _ error) {
	sn := s.client.SnapshotService(s.snapshotter)
	var infos []snapshots.Info
	// Usage is not called inside Walk: that would hold containerd's
	// metadata read lock while the usage of active snapshots is computed.
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		infos = append(infos, info)
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("walk snapshots: %w", err)
	}
	present := make(map[string]bool, len(infos))
	for _, info := range infos {
		present[info.Name] = true
		if info.Kind == snapshots.KindCommitted {
			s.usageMu.Lock()
			u, ok := s.usage[info.Name]
			s.usageMu.Unlock()
			if ok {
				size, inodes = size+u.size, inodes+u.inodes
				continue
			}
		}
		u, err := sn.Usage(ctx, info.Name)
		if errdefs.IsNotFound(err) {
			continue // removed since the walk
		}
		if err != nil {
			return 0, 0, fmt.Errorf("usage of snapshot %q: %w", info.Name, err)
		}
		size, inodes = size+u.Size, inodes+u.Inodes
		if info.Kind == snapshots.KindCommitted {
			s.usageMu.Lock()
			s.usage[info.Name] = snapshotUsage{size: u.Size, inodes: u.Inodes}
			s.usageMu.Unlock()
		}
	}
	s.usageMu.Lock()
	for name := range s.usage {
		if !present[name] {
			delete(s.usage, name)
		}
	}
	s.usageMu.Unlock()
	return size, inodes, nil
}
