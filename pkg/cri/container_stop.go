package cri

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	"github.com/aurae-runtime/aurae-cri/pkg/signals"
)

// StopContainer implements RuntimeService.StopContainer: the container's
// stop signal (its config's, else its image's, else SIGTERM; resolved at
// CreateContainer), SIGKILL after the timeout. Unknown ids succeed.
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
		if err == nil {
			r.nriStopped(c.ID)
		}
		return err
	}
	ctrl, err := r.controllerOf(c.SandboxID)
	if err != nil {
		return err
	}
	callCtx, cancel := bounded(ctx, timeout+podCallTimeout)
	defer cancel()
	if err := ctrl.StopContainer(callCtx, c.ID, timeout, c.StopSignal); err != nil && !errdefs.IsNotFound(err) {
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
	r.releaseRootfs(c)
	r.log.Info("container stopped", "pod", c.SandboxID, "container", c.ID)
	return nil
}

// recordExit marks a container exited with the status its runtime reports
// (unknown when it has none), publishes the stop event once, and releases
// its rootfs (releaseRootfs).
func (r *Runtime) recordExit(id, podID string, st *controller.ContainerState) {
	changed, wasCreated := false, false
	c, err := r.store.UpdateContainer(id, func(cur sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
		if cur.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return cur, nil
		}
		changed = true
		// A container recorded created that its controller started.
		wasCreated = cur.State == runtimeapi.ContainerState_CONTAINER_CREATED && st != nil && st.State == controller.StateExited && !st.StartedAt.IsZero()
		cur.State = runtimeapi.ContainerState_CONTAINER_EXITED
		cur.FinishedAt = time.Now()
		if st != nil && st.State == controller.StateExited {
			cur.ExitCode = st.ExitCode
			if !st.FinishedAt.IsZero() {
				cur.FinishedAt = st.FinishedAt
			}
			cur.Reason, cur.Message = st.Reason, st.Message
			if cur.StartedAt.IsZero() {
				// One recorded created whose start a crash cut short.
				cur.StartedAt = st.StartedAt
			}
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
		r.cfg.Metrics.ContainerExited(r.handlerLabel(podID), c.Status.Reason)
		if wasCreated {
			// It ran and ended before its StartContainer recorded it
			// running (a container that exits at once): its start is
			// told first, and StartContainer does not tell it again.
			r.publish(id, podID, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
		}
		r.publish(id, podID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
		r.nriStopped(id)
		// StopContainer has unmounted it already (it holds the lock).
		r.bg.Go(func() {
			unlock := r.lockContainer(id)
			defer unlock()
			r.releaseRootfs(c)
		})
	}
}

// stopSignal resolves a container's stop signal as containerd does: the
// config's stop_signal, else the image config's StopSignal (a name or a
// number), else SIGTERM, which is "". The result is a canonical name
// ("SIGQUIT", "SIGRTMIN+3").
func stopSignal(cfg runtimeapi.Signal, image string) (string, error) {
	name := ""
	if cfg != runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
		n, ok := runtimeapi.Signal_name[int32(cfg)]
		if !ok {
			return "", fmt.Errorf("stop_signal: unknown signal %d: %w", cfg, errInvalid)
		}
		n = strings.TrimPrefix(n, "SIGNAL_")
		n = strings.Replace(n, "PLUS", "+", 1)
		name = strings.Replace(n, "MINUS", "-", 1)
	} else if image != "" {
		name = image
	}
	if name == "" {
		return "", nil
	}
	c, err := signals.Canonical(name)
	if err != nil {
		field := "stop_signal"
		if cfg == runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
			field = "the image's StopSignal"
		}
		return "", fmt.Errorf("%s: %w: %w", field, err, errInvalid)
	}
	if c == "SIGTERM" {
		return "", nil
	}
	return c, nil
}

// criSignal is the CRI's Signal for a canonical stop signal name ("" is
// SIGTERM).
func criSignal(name string) runtimeapi.Signal {
	if name == "" {
		return runtimeapi.Signal_SIGNAL_SIGTERM
	}
	sig, err := signals.Parse(name)
	if err != nil {
		return runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT
	}
	n := signals.Name(sig)
	if rest, ok := strings.CutPrefix(n, "SIGRTMIN+"); ok {
		if sig > 49 { // the CRI counts down from SIGRTMAX (64) above SIGRTMIN+15
			n = "SIGRTMAXMINUS" + strconv.Itoa(64-int(sig))
		} else {
			n = "SIGRTMINPLUS" + rest
		}
	}
	if n == "SIGRTMAXMINUS0" {
		n = "SIGRTMAX"
	}
	return runtimeapi.Signal(runtimeapi.Signal_value["SIGNAL_"+n])
}
