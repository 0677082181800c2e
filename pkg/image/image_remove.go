package image

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
)

// RemoveImage removes the image the spec names (by tag, digest or id) with
// all its tags and digests. Removing an absent image succeeds.
func (s *Service) RemoveImage(ctx context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if err := s.Remove(ctx, r.GetImage().GetImage()); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// Remove deletes every record of the image refOrID names. Its content and
// snapshots go with containerd's garbage collection, except the snapshots
// that a container rootfs still builds on.
func (s *Service) Remove(ctx context.Context, refOrID string) (retErr error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	steps := timing.Start()
	ctx, calls := timing.WithCalls(ctx)
	defer func() {
		steps.Log(ctx, s.logger, "remove image steps", append(calls.Attrs("containerd"), "image", refOrID, "ok", retErr == nil)...)
	}()
	img, err := s.resolve(ctx, refOrID)
	steps.Done("resolve")
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove image %q: %w", refOrID, err)
	}
	store := s.client.ImageService()
	for i, name := range img.records {
		var opts []images.DeleteOpt
		if i == len(img.records)-1 {
			// Collect garbage once the last record is gone.
			opts = append(opts, images.SynchronousDelete())
		}
		if err := store.Delete(ctx, name, opts...); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove image %q: record %q: %w", img.ID, name, err)
		}
		s.idx.drop(s.idx.begin(), name)
		if i == len(img.records)-1 {
			steps.Done("delete_last_gc")
		} else {
			steps.Done("delete")
		}
	}
	s.logger.InfoContext(ctx, "removed image", "image", refOrID, "id", img.ID, "records", len(img.records))
	return nil
}
