package cri

import (
	"context"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// monitor notices containers that exited by themselves, so that List and
// Status, which answer from memory, see exits: it follows each
// controller's events, and asks the controllers about every running
// container each MonitorInterval as a safety net.
func (r *Runtime) monitor(ctx context.Context) {
	seen := map[controller.Controller]bool{}
	for _, ctrl := range r.cfg.Controllers {
		if !seen[ctrl] {
			seen[ctrl] = true
			go r.follow(ctx, ctrl)
		}
	}
	t := time.NewTicker(r.cfg.MonitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.checkExits(ctx, nil)
	}
}

// follow records the exits a controller reports as they happen. Each time
// it (re)subscribes it resyncs, since events may have been missed.
func (r *Runtime) follow(ctx context.Context, ctrl controller.Controller) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		evs, err := ctrl.Events(ctx)
		if err != nil {
			r.log.Debug("container events", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		r.checkExits(ctx, ctrl)
		for ev := range evs {
			if ev.Type != controller.EventExited {
				continue
			}
			st := ev.Container
			c, err := r.store.Container(st.ID)
			if err != nil || c.SandboxID != st.PodID || c.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
				continue
			}
			r.recordExit(c.ID, c.SandboxID, &st)
			r.log.Info("container exited", "pod", c.SandboxID, "container", c.ID, "exit_code", st.ExitCode, "reason", st.Reason)
		}
	}
}

// checkExits asks the controller (only) of every running container (of
// ctrl's pods, when ctrl is not nil) whether it exited.
func (r *Runtime) checkExits(ctx context.Context, only controller.Controller) {
	for _, c := range r.store.Containers() {
		if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		ctrl, err := r.controllerOf(c.SandboxID)
		if err != nil || (only != nil && ctrl != only) {
			continue
		}
		callCtx, cancel := bounded(ctx, statsTimeout)
		st, err := ctrl.ContainerStatus(callCtx, c.ID)
		cancel()
		switch {
		case errdefs.IsNotFound(err):
			r.recordExit(c.ID, c.SandboxID, nil)
		case err != nil:
			r.log.Debug("container status", "container", c.ID, "error", err)
		case st.State == controller.StateExited:
			r.recordExit(c.ID, c.SandboxID, &st)
			r.log.Info("container exited", "pod", c.SandboxID, "container", c.ID, "exit_code", st.ExitCode, "reason", st.Reason)
		}
	}
}

// Recover reconciles the store with the controllers, then starts serving
// and watching. Creations and removals cut short by a crash are undone or
// finished first (recoverIntents); pods a controller runs that the store
// does not know are left alone (unknownPod); pods the controller lost are
// NOTREADY; containers that exited while aurae-cri was down get their real
// exit status.
func (r *Runtime) Recover(ctx context.Context) error {
	r.recoverIntents(ctx)
	known := map[string]bool{}
	for _, sb := range r.store.Sandboxes() {
		known[sb.ID] = true
	}
	for handler, ctrl := range r.cfg.Controllers {
		callCtx, cancel := bounded(ctx, podCallTimeout)
		pods, err := ctrl.ListPods(callCtx)
		cancel()
		if err != nil {
			return err
		}
		running := map[string]bool{}
		for _, p := range pods {
			id := p.ID
			running[id] = true
			if !known[id] {
				r.unknownPod(handler, id)
			}
		}
		for _, sb := range r.store.Sandboxes() {
			if sb.RuntimeHandler == handler && !running[sb.ID] && sb.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				r.log.Warn("pod is gone from its runtime", "pod", sb.ID)
				_, _ = r.store.UpdateSandbox(sb.ID, func(st sandbox.SandboxStatus) (sandbox.SandboxStatus, error) {
					st.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
					return st, nil
				})
			}
		}
	}
	r.checkExits(ctx, nil)
	r.ready.Store(true)
	r.log.Info("recovered", "pods", len(r.store.Sandboxes()), "containers", len(r.store.Containers()))
	go r.monitor(context.WithoutCancel(ctx))
	return nil
}
