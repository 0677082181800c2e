package cri

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// StopContainer implements RuntimeService.StopContainer: SIGTERM (or the
// image's stop signal), SIGKILL after the timeout. Unknown ids succeed.
func (r *Runtime) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if req.GetTimeout() < 0 {
		return nil, fmt.Errorf("timeout %d is negative: %w", req.GetTimeout(), errInvalid)
	}
	if err := r.stopContainer(ctx, req.GetContainerId(), time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, err
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

func (r *Runtime) stopContainer(ctx context.Context, id string, timeout time.Duration) error {
	c, err := r.store.Container(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	unlock := r.lockContainer(c.ID)
	defer unlock()
	if c, err = r.store.Container(c.ID); err != nil {
		return err
	}
	switch c.Status.State {
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return nil
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		// Never started: it is now exited, and cannot be started.
		_, err := r.store.UpdateContainer(c.ID, func(st sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
			st.State = runtimeapi.ContainerState_CONTAINER_EXITED
			st.FinishedAt = time.Now()
			return st, nil
		})
		return err
	}
	ctrl, err := r.controllerOf(c.SandboxID)
	if err != nil {
		return err
	}
	callCtx, cancel := bounded(ctx, timeout+podCallTimeout)
	defer cancel()
	if err := ctrl.StopContainer(callCtx, c.ID, timeout); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("stop container %s: %w", c.ID, err)
	}
	st, err := ctrl.ContainerStatus(callCtx, c.ID)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("status of stopped container %s: %w", c.ID, err)
	}
	var exited *controller.ContainerState
	if err == nil {
		exited = &st
	}
	r.recordExit(c.ID, c.SandboxID, exited)
	r.log.Info("container stopped", "pod", c.SandboxID, "container", c.ID)
	return nil
}

// recordExit marks a container exited with the status its runtime reports
// (unknown when it has none), and publishes the stop event once.
func (r *Runtime) recordExit(id, podID string, st *controller.ContainerState) {
	changed := false
	_, err := r.store.UpdateContainer(id, func(cur sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
		if cur.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return cur, nil
		}
		changed = true
		cur.State = runtimeapi.ContainerState_CONTAINER_EXITED
		cur.FinishedAt = time.Now()
		if st != nil && st.State == controller.StateExited {
			cur.ExitCode = st.ExitCode
			if !st.FinishedAt.IsZero() {
				cur.FinishedAt = st.FinishedAt
			}
			cur.Reason, cur.Message = st.Reason, st.Message
		} else {
			cur.ExitCode, cur.Reason = 255, "Unknown"
		}
		if cur.Reason == "" {
			cur.Reason = "Completed"
			if cur.ExitCode != 0 {
				cur.Reason = "Error"
			}
		}
		return cur, nil
	})
	if err != nil {
		r.log.Error("record container exit", "container", id, "error", err)
		return
	}
	if changed {
		r.publish(id, podID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
	}
}
