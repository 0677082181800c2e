package cri

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// StopPodSandbox implements RuntimeService.StopPodSandbox: its containers
// are killed, its network is torn down (once), it becomes NOTREADY. An
// unknown id succeeds: the kubelet retries.
func (r *Runtime) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if errors.Is(err, errdefs.ErrNotFound) {
		return &runtimeapi.StopPodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := r.stopPod(ctx, sb); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (r *Runtime) stopPod(ctx context.Context, sb sandbox.Sandbox) error {
	unlock := r.lockPod(sb.ID)
	defer unlock()
	for _, c := range r.store.ContainersOf(sb.ID) {
		if err := r.stopContainer(ctx, c.ID, 0); err != nil {
			return fmt.Errorf("stop pod %s: %w", sb.ID, err)
		}
	}
	if cur, err := r.store.Sandbox(sb.ID); err == nil && cur.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
		// NRI plugins hear of a pod's stop once, its containers stopped,
		// the pod still there.
		nriCtx, cancel := bounded(ctx, nriCallTimeout)
		if err := r.nri.StopPodSandbox(nriCtx, cur); err != nil {
			r.log.Warn("NRI StopPodSandbox", "pod", sb.ID, "error", err)
		}
		cancel()
	}
	err := r.stopPodRuntime(ctx, sb.ID)
	if _, uerr := r.store.UpdateSandbox(sb.ID, func(st sandbox.SandboxStatus) (sandbox.SandboxStatus, error) {
		if err == nil {
			st.CleanupError = ""
			return st, nil
		}
		// Cleanup failed: the pod is not ready any more, and says why.
		st.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		st.CleanupError = err.Error()
		return st, nil
	}); uerr != nil && err == nil {
		return uerr
	}
	if err != nil {
		r.log.Warn("pod sandbox cleanup failed: NOTREADY until a stop or remove finishes it", "pod", sb.ID, "error", err)
	}
	return err
}

// stopPodRuntime tears down a pod's network (once) and stops it in its
// controller; the pod is then NOTREADY.
func (r *Runtime) stopPodRuntime(ctx context.Context, id string) error {
	sb, err := r.store.Sandbox(id)
	if err != nil {
		return err
	}
	if sb.Status.NetworkUp {
		callCtx, cancel := bounded(ctx, podCallTimeout)
		defer cancel()
		if err := r.cfg.Network.Teardown(callCtx, sb.ID, sb.Status.NetNSPath, sb.Config); err != nil {
			return fmt.Errorf("tear down network of pod %s: %w", sb.ID, err)
		}
		if _, err := r.store.UpdateSandbox(sb.ID, func(st sandbox.SandboxStatus) (sandbox.SandboxStatus, error) {
			st.NetworkUp = false
			return st, nil
		}); err != nil {
			return err
		}
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return err
	}
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	if err := ctrl.StopPod(callCtx, sb.ID); err != nil {
		return fmt.Errorf("stop pod %s: %w", sb.ID, err)
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		if _, err := r.store.UpdateSandbox(sb.ID, func(st sandbox.SandboxStatus) (sandbox.SandboxStatus, error) {
			st.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
			return st, nil
		}); err != nil {
			return err
		}
		r.log.Info("pod sandbox stopped", "pod", sb.ID)
	}
	return nil
}

// RemovePodSandbox implements RuntimeService.RemovePodSandbox: stops the
// pod if needed, removes its containers and frees it. Unknown ids succeed.
func (r *Runtime) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if errors.Is(err, errdefs.ErrNotFound) {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := r.removePod(ctx, sb); err != nil {
		return nil, err
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

// removePod stops a pod, removes its containers and frees it. It is marked
// REMOVING first: recovery finishes a removal cut short.
func (r *Runtime) removePod(ctx context.Context, sb sandbox.Sandbox) error {
	if !sb.Status.Removing {
		if _, err := r.store.UpdateSandbox(sb.ID, func(st sandbox.SandboxStatus) (sandbox.SandboxStatus, error) {
			st.Removing = true
			return st, nil
		}); err != nil {
			if errdefs.IsNotFound(err) {
				return nil
			}
			return err
		}
	}
	if err := r.stopPod(ctx, sb); err != nil {
		return err
	}
	unlock := r.lockPod(sb.ID)
	defer unlock()
	for _, c := range r.store.ContainersOf(sb.ID) {
		if err := r.removeContainer(ctx, c.ID, removeRecordLater); err != nil {
			return fmt.Errorf("remove pod %s: %w", sb.ID, err)
		}
	}
	r.fault(FaultPodRemoving)
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return err
	}
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	if err := ctrl.RemovePod(callCtx, sb.ID); err != nil {
		return fmt.Errorf("remove pod %s: %w", sb.ID, err)
	}
	r.nri.RemovePodSandbox(callCtx, sb)
	if err := r.store.DeleteSandbox(sb.ID); err != nil {
		return err
	}
	r.log.Info("pod sandbox removed", "pod", sb.ID)
	return nil
}
