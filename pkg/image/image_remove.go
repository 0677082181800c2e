package image

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"golang.org/x/sync/errgroup"
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
	if len(img.records) == 0 {
		return nil
	}
	// What a pull just made is held by its lease until the lease goes:
	// the collection below must not find it held.
	s.awaitLeaseDrops()
	steps.Done("pull_leases")
	store := s.client.ImageService()
	del := func(name string, opts ...images.DeleteOpt) error {
		if err := store.Delete(ctx, name, opts...); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove image %q: record %q: %w", img.ID, name, err)
		}
		s.idx.drop(s.idx.begin(), name)
		return nil
	}
	// All records but the last go at once; the last one's deletion
	// collects the garbage, once nothing else holds the image.
	last := len(img.records) - 1
	var g errgroup.Group
	for _, name := range img.records[:last] {
		g.Go(func() error { return del(name) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	steps.Done("delete")
	if err := del(img.records[last], images.SynchronousDelete()); err != nil {
		return err
	}
	steps.Done("delete_last_gc")
	s.logger.InfoContext(ctx, "removed image", "image", refOrID, "id", img.ID, "records", len(img.records))
	return nil
}
