package cri

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// lazyRootfsTimeout bounds each try of the removal of a removed native
// container's remains (in its controller, its rootfs dirs and snapshot)
// off RemoveContainer's path; Close waits for them.
const lazyRootfsTimeout = 30 * time.Second

// lazyRemovalTries is how many times that removal is tried (a
// lazyRemovalBackoff, then two, apart) before it is left to the next
// start.
const lazyRemovalTries = 3

// lazyRemovalBackoff: see lazyRemovalTries (tests shorten it).
var lazyRemovalBackoff = time.Second

// RemoveContainer implements RuntimeService.RemoveContainer: a running
// container is killed first; its rootfs and record go. It is marked
// REMOVING before that (Status.Removing): recovery finishes a removal cut
// short. Unknown ids succeed.
func (r *Runtime) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if err := r.removeContainer(ctx, req.GetContainerId(), removeAllLater); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

// removal says what of a container's removal is left off the call's path.
type removal int

const (
	// removeNow: all of it is done before the call returns.
	removeNow removal = iota
	// removeRecordLater: the record's deletion from the file, and a native
	// container's snapshot.
	removeRecordLater
	// removeAllLater: also a native container's removal from its
	// controller and its rootfs dirs (RemoveContainer; a pod's removal,
	// which frees the pod in the controller next, takes
	// removeRecordLater).
	removeAllLater
)

// removeContainer removes container id. Unless how is removeNow, its
// record goes from the store's memory at once, and what how leaves off
// this call's path goes after it, then its record's file
// (sandbox.Store.DeleteRemovedContainer): the REMOVING mark, on disk
// before anything was removed, makes recovery finish a removal that was
// cut short or failed.
func (r *Runtime) removeContainer(ctx context.Context, id string, how removal) (retErr error) {
	lazy := how != removeNow
	steps := timing.Start()
	if err := r.stopContainer(ctx, id, 0); err != nil {
		return err
	}
	steps.Done("stop")
	c, err := r.store.Container(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() {
		steps.Log(ctx, r.log, "remove container steps", "pod", c.SandboxID, "container", c.ID, "ok", retErr == nil)
	}()
	unlock := r.lockContainer(c.ID)
	defer unlock()
	steps.Done("lock")
	if _, err := r.store.UpdateContainer(c.ID, func(st sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
		st.Removing = true
		return st, nil
	}); err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	steps.Done("mark_removing")
	var ctrl controller.Controller // nil: the pod is gone
	if sb, err := r.store.Sandbox(c.SandboxID); err == nil {
		if ctrl, err = r.controller(sb.RuntimeHandler); err != nil {
			return err
		}
	}
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	removeCtrIn := func(ctx context.Context) error {
		if ctrl == nil {
			return nil
		}
		if err := ctrl.RemoveContainer(ctx, c.SandboxID, c.ID); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove container %s: %w", c.ID, err)
		}
		return nil
	}
	removeRootfsIn := func(ctx context.Context) error {
		if err := r.cfg.Images.RemoveRootfs(ctx, c.ID); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove rootfs of %s: %w", c.ID, err)
		}
		return nil
	}
	// lastStep is what the record's deletion waits for (nil: nothing).
	var lastStep func() error
	if rootfsFreeAtExit(ctrl) {
		// The runtime is done with the rootfs (unmounted at the exit,
		// unless that failed).
		dir := r.rootfsDir(c.ID)
		if _, err := unmountAll(dir); err != nil {
			return err
		}
		steps.Done("unmount")
		// The container and its rootfs dirs go at once, its snapshot
		// with them (alsoRootfs) or after; each removal tolerates being
		// done again.
		removeCtrAndDirs := func(ctx context.Context, alsoRootfs bool) error {
			var ctrErr, rootfsErr error
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctrErr = removeCtrIn(ctx)
			}()
			if alsoRootfs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rootfsErr = removeRootfsIn(ctx)
				}()
			}
			dirErr := removeRootfsDirs(dir)
			wg.Wait()
			return errors.Join(ctrErr, rootfsErr, dirErr)
		}
		switch how {
		case removeAllLater:
			// Off the call's path, once the REMOVING mark is on disk:
			// the container is gone from the store's memory (its name
			// free) when RemoveContainer returns; what is left of it in
			// the controller and containerd goes in the background,
			// retried, and a crash or a failure leaves the REMOVING
			// record, whose removal the next start finishes.
			lastStep = func() error {
				var err error
				for try := range lazyRemovalTries {
					if try > 0 {
						time.Sleep(time.Duration(try) * lazyRemovalBackoff)
					}
					ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lazyRootfsTimeout)
					if err = removeCtrAndDirs(ctx, false); err == nil {
						r.fault(FaultContainerRemoving)
						err = removeRootfsIn(ctx)
					}
					cancel()
					if err == nil {
						return nil
					}
					r.log.Warn("remove a removed container's remains", "pod", c.SandboxID, "container", c.ID, "try", try+1, "error", err)
				}
				return err
			}
		default:
			// The snapshot goes here, or with the record, off the
			// call's path (nothing but aurae-cri uses it once the dirs
			// are gone).
			if err := removeCtrAndDirs(callCtx, !lazy); err != nil {
				return err
			}
			if lazy {
				lastStep = func() error {
					ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lazyRootfsTimeout)
					defer cancel()
					return removeRootfsIn(ctx)
				}
			}
			steps.Done("controller_remove_and_rootfs")
			r.fault(FaultContainerRemoving)
		}
	} else {
		// A VM pod's guest shares the rootfs until its controller
		// removes the container.
		if err := removeCtrIn(callCtx); err != nil {
			return err
		}
		steps.Done("controller_remove")
		r.fault(FaultContainerRemoving)
		if err := unmountRootfs(r.rootfsDir(c.ID)); err != nil {
			return err
		}
		steps.Done("unmount")
		if err := removeRootfsIn(callCtx); err != nil {
			return err
		}
		steps.Done("rootfs")
	}
	if !r.releaseImageVolumes(ctx, volumeKeys(c.ImageVolumes), c.ID) {
		return fmt.Errorf("remove container %s: release its image volumes: %w", c.ID, errdefs.ErrUnavailable)
	}
	steps.Done("image_volumes")
	del := r.store.DeleteContainer
	if lazy {
		del = func(id string) error { return r.store.DeleteRemovedContainer(id, lastStep) }
	}
	if err := del(c.ID); err != nil {
		return err
	}
	steps.Done("delete_record")
	r.publishGone(c, runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT)
	if sb, err := r.store.Sandbox(c.SandboxID); err == nil {
		nriCtx, cancel := bounded(ctx, nriCallTimeout)
		r.nri.RemoveContainer(nriCtx, sb, c)
		cancel()
	}
	r.log.Info("container removed", "pod", c.SandboxID, "container", c.ID)
	return nil
}
