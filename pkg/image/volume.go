package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// An image volume (Kubernetes `image` volumes, CRI Mount.image) is a
// read-only view snapshot of an image, one per image, shared by every
// container that mounts it. Its users are counted by the caller, which
// removes the view with the last of them.

// LabelImageVolume names the image (id) of an image volume's view snapshot
// and lease.
const LabelImageVolume = "io.aurae.cri.image-volume"

// imageVolumePrefix starts the snapshot key of every image volume.
const imageVolumePrefix = "aurae-cri/image-volume/"

// ImageVolumeKey is the snapshot key of the image volume of an image (by
// its id, "sha256:<hex>").
func ImageVolumeKey(imageID string) string {
	return imageVolumePrefix + strings.TrimPrefix(imageID, digest.Canonical.String()+":")
}

// ImageVolumeLease is the id of the lease that holds an image volume's
// view (and the image layers under it, even when the image is removed)
// until RemoveImageVolume.
func ImageVolumeLease(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "aurae-cri.image-volume." + hex.EncodeToString(sum[:20])
}

// IsImageVolumeKey tells an image volume's snapshot key.
func IsImageVolumeKey(key string) bool { return strings.HasPrefix(key, imageVolumePrefix) }

// PrepareImageVolume makes (or finds again) the read-only view snapshot of
// the image imageID and returns its mounts (a read-only bind, or an overlay
// of lower dirs only).
func (s *Service) PrepareImageVolume(ctx context.Context, imageID string) (_ []Mount, retErr error) {
	if _, err := digest.Parse(imageID); err != nil {
		return nil, fmt.Errorf("image volume: image id %q: %w", imageID, errdefs.ErrInvalidArgument)
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	key := ImageVolumeKey(imageID)
	log := s.logger.With("image_id", imageID, "snapshot", key)
	img, err := s.resolve(ctx, imageID)
	if err != nil {
		return nil, fmt.Errorf("image volume of %s: %w", imageID, err)
	}
	if err := s.ensureUnpacked(ctx, img); err != nil {
		return nil, fmt.Errorf("image volume of %s: %w", imageID, err)
	}
	labels := map[string]string{LabelImageVolume: imageID}
	lease, undoLease, err := s.ensureLease(ctx, ImageVolumeLease(key), labels)
	if err != nil {
		return nil, fmt.Errorf("image volume of %s: lease: %w", imageID, err)
	}
	defer func() {
		if retErr != nil {
			undoLease(log, "undo image volume lease")
		}
	}()
	sn := s.client.SnapshotService(s.snapshotter)
	mounts, err := sn.View(leases.WithLease(ctx, lease.ID), key, img.ChainID, snapshots.WithLabels(labels))
	if errdefs.IsAlreadyExists(err) {
		info, serr := sn.Stat(ctx, key)
		if serr != nil {
			return nil, fmt.Errorf("image volume of %s: stat existing view: %w", imageID, serr)
		}
		if info.Parent != img.ChainID || info.Kind != snapshots.KindView {
			return nil, fmt.Errorf("image volume of %s: snapshot %q is not its view (parent %s, %s): %w", imageID, key, info.Parent, info.Kind, errdefs.ErrAlreadyExists)
		}
		mounts, err = sn.Mounts(ctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("image volume of %s: view: %w", imageID, err)
	}
	log.InfoContext(ctx, "prepared image volume")
	return fromContainerdMounts(mounts), nil
}

// RemoveImageVolume removes the view of an image volume (by its key) and
// its lease; it must no longer be mounted. An absent one is fine.
func (s *Service) RemoveImageVolume(ctx context.Context, key string) error {
	if !IsImageVolumeKey(key) {
		return fmt.Errorf("remove image volume: %q is not an image volume key: %w", key, errdefs.ErrInvalidArgument)
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	if err := s.client.SnapshotService(s.snapshotter).Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove image volume %q: snapshot: %w", key, err)
	}
	err := s.client.LeasesService().Delete(ctx, leases.Lease{ID: ImageVolumeLease(key)}, leases.SynchronousDelete)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove image volume %q: lease: %w", key, err)
	}
	s.logger.InfoContext(ctx, "removed image volume", "snapshot", key)
	return nil
}

// ImageVolumes lists the keys of the image volume views containerd holds
// (for recovery: each one without a user is removed).
func (s *Service) ImageVolumes(ctx context.Context) ([]string, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	var keys []string
	err := s.client.SnapshotService(s.snapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if IsImageVolumeKey(info.Name) {
			keys = append(keys, info.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list image volumes: %w", err)
	}
	// A lease whose view was never made (a crash between the two).
	ls, err := s.client.LeasesService().List(ctx, "labels.\""+LabelImageVolume+"\"")
	if err != nil {
		return keys, fmt.Errorf("list image volume leases: %w", err)
	}
	for _, l := range ls {
		key := ImageVolumeKey(l.Labels[LabelImageVolume])
		if ImageVolumeLease(key) == l.ID && !slices.Contains(keys, key) {
			keys = append(keys, key)
		}
	}
	return keys, nil
}
