package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
)

// Mount is one mount of a container rootfs, to be mounted in order at the
// rootfs path: an overlay ("overlay", "overlay", "lowerdir=...,upperdir=...,
// workdir=...") or, for an image with no layer, a bind mount.
type Mount struct {
	Type    string
	Source  string
	Options []string
}

// RootfsKey is the snapshot key of a container's rootfs.
func RootfsKey(containerID string) string { return "aurae-cri/rootfs/" + containerID }

// RootfsLease is the id of the lease that held a container's rootfs
// snapshot before snapshots were made GC roots (see PrepareRootfs): such
// leases are moved onto their snapshots when the service starts
// (migrateRootfsLeases). Lease ids are at most 76 characters, so the
// container id is hashed; the lease's labels name the container.
func RootfsLease(containerID string) string {
	sum := sha256.Sum256([]byte(containerID))
	return "aurae-cri.rootfs." + hex.EncodeToString(sum[:20])
}

// labelGCRoot marks a containerd object that its garbage collector keeps,
// with what it references (a snapshot's parents: the image's layers).
const labelGCRoot = "containerd.io/gc.root"

// PrepareRootfs makes the writable rootfs snapshot of a container on top of
// the image's layers and returns its mounts. The snapshot is a root of
// containerd's garbage collector (labelGCRoot, set as it is made), so it
// and the image layers under it stay, even if the image is removed, until
// RemoveRootfs: one record to write and one to remove, where a lease
// holding it cost a second of each. Calling it again for the same
// container and image returns the same mounts.
func (s *Service) PrepareRootfs(ctx context.Context, containerID, imageRef string) (_ []Mount, retErr error) {
	if err := identifiers.Validate(containerID); err != nil {
		return nil, fmt.Errorf("prepare rootfs: container id %q: %w", containerID, err)
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	log := s.logger.With("container", containerID, "image", imageRef)

	img, err := s.resolve(ctx, imageRef)
	if err != nil {
		return nil, fmt.Errorf("prepare rootfs of %q: %w", containerID, err)
	}
	labels := map[string]string{
		LabelContainerID: containerID,
		labelGCRoot:      time.Now().UTC().Format(time.RFC3339),
	}
	sn := s.client.SnapshotService(s.snapshotter)
	key := RootfsKey(containerID)
	mounts, err := sn.Prepare(ctx, key, img.ChainID, snapshots.WithLabels(labels))
	if errdefs.IsNotFound(err) {
		// The image's layers are not unpacked (an image pulled by another
		// client, or whose snapshots were collected): unpack, then again.
		if err := s.ensureUnpacked(ctx, img); err != nil {
			return nil, fmt.Errorf("prepare rootfs of %q: %w", containerID, err)
		}
		mounts, err = sn.Prepare(ctx, key, img.ChainID, snapshots.WithLabels(labels))
	}
	if errdefs.IsAlreadyExists(err) {
		// A retry: the same container on the same image gets its snapshot back.
		info, serr := sn.Stat(ctx, key)
		if serr != nil {
			return nil, fmt.Errorf("prepare rootfs of %q: stat existing snapshot: %w", containerID, serr)
		}
		if info.Parent != img.ChainID {
			return nil, fmt.Errorf("prepare rootfs of %q: snapshot %q exists on another image (%s): %w", containerID, key, info.Parent, errdefs.ErrAlreadyExists)
		}
		mounts, err = sn.Mounts(ctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("prepare rootfs of %q: snapshot: %w", containerID, err)
	}
	log.InfoContext(ctx, "prepared rootfs", "snapshot", key, "image_id", img.ID)
	return fromContainerdMounts(mounts), nil
}

// RemoveRootfs removes a container's rootfs snapshot (and the lease that
// held it, for a container made before snapshots were GC roots whose
// lease could not be moved at the start). The rootfs must no longer be
// mounted. Removing an absent rootfs succeeds. The record is gone when it
// returns; its files (the snapshot's directory, and the layers of a
// removed image only it kept) go with containerd's next garbage
// collection, which its scheduler runs soon after a deletion (and at its
// start), as when containerd's CRI plugin removes a container: a
// synchronous collection per removal costs every removal a walk of all
// containerd's records, one after the other.
func (s *Service) RemoveRootfs(ctx context.Context, containerID string) error {
	if containerID == "" {
		return fmt.Errorf("remove rootfs: empty container id: %w", errdefs.ErrInvalidArgument)
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	key := RootfsKey(containerID)
	if err := s.client.SnapshotService(s.snapshotter).Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove rootfs of %q: snapshot: %w", containerID, err)
	}
	s.leasesMu.Lock()
	_, leased := s.leasedRootfs[containerID]
	s.leasesMu.Unlock()
	if leased {
		err := s.client.LeasesService().Delete(ctx, leases.Lease{ID: RootfsLease(containerID)})
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove rootfs of %q: lease: %w", containerID, err)
		}
		s.leasesMu.Lock()
		delete(s.leasedRootfs, containerID)
		s.leasesMu.Unlock()
	}
	s.logger.InfoContext(ctx, "removed rootfs", "container", containerID, "snapshot", key)
	return nil
}

// migrateRootfsLeases moves the rootfs leases of containers made before
// snapshots were GC roots onto their snapshots: the snapshot is labelled a
// root, then the lease goes. A lease whose container has no snapshot left
// holds nothing and goes. A lease that cannot be moved stays, and
// RemoveRootfs deletes it with its snapshot.
func (s *Service) migrateRootfsLeases(ctx context.Context) {
	ls, err := s.client.LeasesService().List(ctx)
	if err != nil {
		s.logger.WarnContext(ctx, "list leases: rootfs leases of earlier versions not moved", "error", err)
		return
	}
	sn := s.client.SnapshotService(s.snapshotter)
	for _, l := range ls {
		id := l.Labels[LabelContainerID]
		if id == "" || l.ID != RootfsLease(id) {
			continue
		}
		_, err := sn.Update(ctx, snapshots.Info{Name: RootfsKey(id), Labels: map[string]string{
			labelGCRoot: time.Now().UTC().Format(time.RFC3339),
		}}, "labels."+labelGCRoot)
		if err == nil || errdefs.IsNotFound(err) {
			err = s.client.LeasesService().Delete(ctx, l)
		}
		if err != nil && !errdefs.IsNotFound(err) {
			s.logger.WarnContext(ctx, "rootfs lease of an earlier version not moved onto its snapshot: removed with it", "container", id, "lease", l.ID, "error", err)
			s.leasesMu.Lock()
			s.leasedRootfs[id] = struct{}{}
			s.leasesMu.Unlock()
			continue
		}
		s.logger.InfoContext(ctx, "moved the rootfs lease of an earlier version onto its snapshot", "container", id, "lease", l.ID)
	}
}

// RootfsMounts returns the mounts of a container's existing rootfs snapshot
// (after a restart, say); errdefs.ErrNotFound when there is none.
func (s *Service) RootfsMounts(ctx context.Context, containerID string) ([]Mount, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	mounts, err := s.client.SnapshotService(s.snapshotter).Mounts(ctx, RootfsKey(containerID))
	if err != nil {
		return nil, fmt.Errorf("rootfs mounts of %q: %w", containerID, err)
	}
	return fromContainerdMounts(mounts), nil
}

// ensureUnpacked unpacks the image into the snapshotter if its layers are
// not there (an image pulled by another client, or whose snapshots were
// collected).
func (s *Service) ensureUnpacked(ctx context.Context, img Image) error {
	if len(img.records) == 0 {
		return fmt.Errorf("image %s has no record: %w", img.ID, errdefs.ErrNotFound)
	}
	rec, err := s.client.ImageService().Get(ctx, img.records[0])
	if err != nil {
		return fmt.Errorf("image record %q: %w", img.records[0], err)
	}
	cimg := containerdImage(s, rec)
	ok, err := cimg.IsUnpacked(ctx, s.snapshotter)
	if err != nil {
		return fmt.Errorf("check image %s is unpacked: %w", img.ID, err)
	}
	if ok {
		return nil
	}
	s.logger.InfoContext(ctx, "unpacking image", "image", rec.Name, "id", img.ID)
	if err := cimg.Unpack(ctx, s.snapshotter); err != nil {
		return fmt.Errorf("unpack image %s: %w", img.ID, err)
	}
	return nil
}

func fromContainerdMounts(ms []mount.Mount) []Mount {
	out := make([]Mount, len(ms))
	for i, m := range ms {
		out[i] = Mount{Type: m.Type, Source: m.Source, Options: append([]string(nil), m.Options...)}
	}
	return out
}

// ensureLease makes the lease id with labels, or finds it made. undo
// deletes it when this call made it (nothing otherwise), under a fresh
// context, logging a failure as msg.
func (s *Service) ensureLease(ctx context.Context, id string, labels map[string]string) (_ leases.Lease, undo func(log *slog.Logger, msg string), _ error) {
	lm := s.client.LeasesService()
	lease, err := lm.Create(ctx, leases.WithID(id), leases.WithLabels(labels))
	created := err == nil
	if errdefs.IsAlreadyExists(err) {
		lease, err = leases.Lease{ID: id}, nil
	}
	if err != nil {
		return leases.Lease{}, nil, err
	}
	undo = func(log *slog.Logger, msg string) {
		if !created {
			return
		}
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), s.callTO)
		defer dcancel()
		if err := lm.Delete(dctx, lease, leases.SynchronousDelete); err != nil && !errdefs.IsNotFound(err) {
			log.WarnContext(ctx, msg, "error", err)
		}
	}
	return lease, undo, nil
}
