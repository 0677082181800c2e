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

// lazyRootfsTimeout bounds the removal of a removed container's snapshot
// off RemoveContainer's path; Close waits for it.
const lazyRootfsTimeout = 30 * time.Second

// RemoveContainer implements RuntimeService.RemoveContainer: a running
// container is killed first; its rootfs and record go. It is marked
// REMOVING before that (Status.Removing): recovery finishes a removal cut
// short. Unknown ids succeed.
func (r *Runtime) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if err := r.removeContainer(ctx, req.GetContainerId(), true); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

// removeContainer removes container id. With lazy, its record goes from
// the store's memory at once, and a native container's rootfs snapshot,
// then its record's file, off this call's path
// (sandbox.Store.DeleteRemovedContainer): the REMOVING mark, on disk
// before anything was removed, makes recovery finish a removal whose
// snapshot removal or deletion was lost or failed.
func (r *Runtime) removeContainer(ctx context.Context, id string, lazy bool) (retErr error) {
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
	removeCtr := func() error {
		if ctrl == nil {
			return nil
		}
		if err := ctrl.RemoveContainer(callCtx, c.SandboxID, c.ID); err != nil && !errdefs.IsNotFound(err) {
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
	removeRootfs := func() error { return removeRootfsIn(callCtx) }
	// lastStep is what the record's deletion waits for (nil: nothing).
	var lastStep func() error
	if rootfsFreeAtExit(ctrl) {
		// The runtime is done with the rootfs (unmounted at the exit,
		// unless that failed): the container and the rootfs dirs go at
		// once; its snapshot goes with its record, off the call's path
		// when lazy (nothing but aurae-cri uses it once the dirs are
		// gone), or here.
		dir := r.rootfsDir(c.ID)
		if _, err := unmountAll(dir); err != nil {
			return err
		}
		steps.Done("unmount")
		var ctrErr, rootfsErr error
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctrErr = removeCtr()
		}()
		if !lazy {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rootfsErr = removeRootfs()
			}()
		}
		dirErr := removeRootfsDirs(dir)
		wg.Wait()
		if err := errors.Join(ctrErr, rootfsErr, dirErr); err != nil {
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
	} else {
		// A VM pod's guest shares the rootfs until its controller
		// removes the container.
		if err := removeCtr(); err != nil {
			return err
		}
		steps.Done("controller_remove")
		r.fault(FaultContainerRemoving)
		if err := unmountRootfs(r.rootfsDir(c.ID)); err != nil {
			return err
		}
		steps.Done("unmount")
		if err := removeRootfs(); err != nil {
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
