package cri

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// StartContainer implements RuntimeService.StartContainer.
func (r *Runtime) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest) (_ *runtimeapi.StartContainerResponse, retErr error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	c, err := r.store.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	steps := timing.Start()
	unlock := r.lockContainer(c.ID)
	defer unlock()
	defer func() {
		steps.Log(ctx, r.log, "start container steps", "pod", c.SandboxID, "container", c.ID, "ok", retErr == nil)
	}()
	steps.Done("lock")
	if c, err = r.store.Container(c.ID); err != nil {
		return nil, err
	}
	if c.Status.State != runtimeapi.ContainerState_CONTAINER_CREATED || c.Status.Removing {
		return nil, fmt.Errorf("container %s is %s, not created: %w", c.ID, c.Status.State, errPrecondition)
	}
	sb, err := r.store.Sandbox(c.SandboxID)
	if err != nil {
		return nil, err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("pod %s is not ready: %w", sb.ID, errPrecondition)
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return nil, err
	}
	nriCtx, nriCancel := bounded(ctx, nriCallTimeout)
	err = r.nri.StartContainer(nriCtx, sb, c)
	nriCancel()
	if err != nil {
		return nil, fmt.Errorf("start container %s: %w", c.ID, err)
	}
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	startedAt := time.Now()
	started, err := ctrl.StartContainer(callCtx, sb.ID, controller.Container{
		ID: c.ID, Spec: c.Spec, LogPath: c.LogPath, Tty: c.Config.GetTty(), Stdin: c.Config.GetStdin(),
		RestoreFrom: c.RestoreFrom,
	})
	steps.Done("controller_start")
	if errdefs.IsAlreadyExists(err) {
		// The controller has it started: a start that a crash of
		// aurae-cri cut short, finished by the controller after our
		// recovery looked (it was still in flight then). The retry
		// succeeds with the state the controller reports.
		stCtx, stCancel := bounded(ctx, statusTimeout)
		st, serr := ctrl.ContainerStatus(stCtx, c.ID)
		stCancel()
		if serr == nil && r.adoptStart(c, st, "start: a start cut short") {
			return &runtimeapi.StartContainerResponse{}, nil
		}
	}
	if err != nil {
		// As containerd does: the container ends as exited with the
		// reason, so that the kubelet sees why and recreates it.
		msg := err.Error()
		if _, uerr := r.store.UpdateContainer(c.ID, func(st sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
			st.State = runtimeapi.ContainerState_CONTAINER_EXITED
			st.ExitCode, st.Reason, st.Message = 128, "StartError", msg
			st.FinishedAt = time.Now()
			return st, nil
		}); uerr != nil {
			r.log.Error("record start failure", "container", c.ID, "error", uerr)
		} else {
			r.cfg.Metrics.ContainerExited(handlerName(sb.RuntimeHandler), "StartError")
		}
		return nil, fmt.Errorf("start container %s: %w", c.ID, err)
	}
	exitedFirst := false
	if _, err := r.store.UpdateContainer(c.ID, func(st sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
		// The exit of a container that ended at once may have been
		// recorded already (its controller's event came first), and
		// with it the started event (recordExit).
		exitedFirst = st.State == runtimeapi.ContainerState_CONTAINER_EXITED
		if !exitedFirst {
			st.State = runtimeapi.ContainerState_CONTAINER_RUNNING
		}
		st.Pid = started.Pid
		st.StartedAt = startedAt
		return st, nil
	}); err != nil {
		return nil, err
	}
	steps.Done("store")
	if !exitedFirst {
		r.publish(c.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
	}
	if c, err := r.store.Container(c.ID); err == nil {
		nriCtx, cancel := bounded(ctx, nriCallTimeout)
		r.nri.PostStartContainer(nriCtx, sb, c)
		cancel()
	}
	r.log.Info("container started", "pod", sb.ID, "container", c.ID, "pid", started.Pid)
	return &runtimeapi.StartContainerResponse{}, nil
}
