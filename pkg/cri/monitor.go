package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
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
			r.bg.Go(func() { r.follow(ctx, ctrl) })
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
		r.checkExits(ctx, nil, false)
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
		// The resync runs beside the events: a wedged pod delays only
		// its own answer, never the exits the events report.
		r.bg.Go(func() { r.checkExits(ctx, ctrl, false) })
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
