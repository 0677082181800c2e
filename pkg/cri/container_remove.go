package cri

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

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
// the store's memory at once and from its file off this call's path
// (sandbox.Store.DeleteRemovedContainer): the REMOVING mark, on disk
// before anything was removed, makes recovery finish a removal whose
// deletion was lost.
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
	removeRootfs := func() error {
		if err := r.cfg.Images.RemoveRootfs(callCtx, c.ID); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove rootfs of %s: %w", c.ID, err)
		}
		return nil
	}
	if rootfsFreeAtExit(ctrl) {
		// The runtime is done with the rootfs (unmounted at the exit,
		// unless that failed): the container, its snapshot and the
		// rootfs dirs go at once.
		dir := r.rootfsDir(c.ID)
		if _, err := unmountAll(dir); err != nil {
			return err
		}
		steps.Done("unmount")
		var ctrErr, dirErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			ctrErr = removeCtr()
		}()
		go func() {
			defer wg.Done()
			dirErr = removeRootfsDirs(dir)
		}()
		rootfsErr := removeRootfs()
		wg.Wait()
		if err := errors.Join(ctrErr, rootfsErr, dirErr); err != nil {
			return err
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
		del = r.store.DeleteRemovedContainer
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
