package cri

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sync/errgroup"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

const (
	// listPodsTimeout bounds one controller's ListPods at recovery (a VM
	// controller dials each guest).
	listPodsTimeout = 2 * time.Minute
	// statusTimeout bounds one ContainerStatus call of the exit poll and
	// of recovery.
	statusTimeout = 5 * time.Second
)

// Recover reconciles the store with the controllers, then starts serving
// and watching. The controllers are asked in parallel, each under its own
// deadline; one that does not answer is logged and its pods are left as
// recorded. Creations and removals cut short by a crash are undone or
// finished first (recoverIntents); pods a controller runs that the store
// does not know are left alone (unknownPod); pods the controller
// lost are NOTREADY; containers that exited while aurae-cri was down get
// their real exit status, and a container whose status cannot be had is
// UNKNOWN (the kubelet then stops and removes it): an error about one
// object never stops the daemon.
//
// A store that started empty (its file unreadable or missing) is first
// rebuilt from the on-disk records of the pods and containers
// (rebuildOrSync).
func (r *Runtime) Recover(ctx context.Context) error {
	start := time.Now()
	r.rebuildOrSync()
	r.recoverIntents(ctx)
	if err := r.cleanCheckpointWorkDirs(); err != nil {
		r.log.Warn("remove checkpoint work dirs", "error", err)
	}
	r.recoverImageVolumes(ctx)
	handlers := map[controller.Controller][]string{}
	for handler, ctrl := range r.cfg.Controllers {
		handlers[ctrl] = append(handlers[ctrl], handler)
	}
	var g errgroup.Group
	g.SetLimit(fanoutLimit)
	for ctrl, hs := range handlers {
		g.Go(func() error {
			r.recoverController(ctx, ctrl, hs)
			return nil
		})
	}
	_ = g.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	r.recoverResizes(ctx)
	r.checkExits(ctx, nil, true)
	r.ready.Store(true)
	pods, containers := len(r.store.Sandboxes()), len(r.store.Containers())
	r.cfg.Metrics.Recovered(time.Since(start).Seconds(), pods, containers)
	r.log.Info("recovered", "pods", pods, "containers", containers, "took", time.Since(start).Round(time.Millisecond))
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.stopMonitor = cancel
	r.bg.Go(func() { r.monitor(mctx) })
	return nil
}

// recoverController reconciles the pods of the handlers a controller
// serves with what it runs.
func (r *Runtime) recoverController(ctx context.Context, ctrl controller.Controller, handlers []string) {
	callCtx, cancel := bounded(ctx, listPodsTimeout)
	pods, err := ctrl.ListPods(callCtx)
	cancel()
	if err != nil {
		r.log.Error("recover: list pods; their pods stay as recorded", "runtime_handlers", handlers, "error", err)
		return
	}
	mine := map[string]bool{}
	for _, h := range handlers {
		mine[h] = true
	}
	known := map[string]bool{}
	for _, sb := range r.store.Sandboxes() {
		known[sb.ID] = true
	}
	running := map[string]bool{}
	for _, p := range pods {
		running[p.ID] = true
		if known[p.ID] {
			continue
		}
		r.unknownPod(handlers, p.ID)
	}
	for _, sb := range r.store.Sandboxes() {
		if mine[sb.RuntimeHandler] && !running[sb.ID] && sb.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			r.log.Warn("pod is gone from its runtime", "pod", sb.ID)
			_, _ = r.store.UpdateSandbox(sb.ID, func(st sandbox.SandboxStatus) (sandbox.SandboxStatus, error) {
				st.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
				return st, nil
			})
		}
	}
}

// checkExits asks the controller (only) of every running or unknown
// container (of ctrl's pods, when ctrl is not nil) whether it exited, in
// parallel (at most fanoutLimit calls in flight), each call under its own
// deadline. Each container has at most one check in flight: one whose
// check from an earlier round is still pending (a wedged pod) is skipped.
// At recovery checkExits waits for its checks, and a running container
// whose status cannot be had becomes UNKNOWN; otherwise (the poll, the
// resync after a resubscription) it does not wait: a round is never held
// by a wedged pod, so the next one sees the other containers' exits on
// time. An unknown container that answers again gets its state back.
func (r *Runtime) checkExits(ctx context.Context, only controller.Controller, recovering bool) {
	var wg sync.WaitGroup
	for _, c := range r.store.Containers() {
		// At recovery, a created one too: a StartContainer cut short by a
		// crash may have started it.
		if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING && c.Status.State != runtimeapi.ContainerState_CONTAINER_UNKNOWN &&
			(!recovering || c.Status.State != runtimeapi.ContainerState_CONTAINER_CREATED) {
			continue
		}
		ctrl, err := r.controllerOf(c.SandboxID)
		if err != nil || (only != nil && ctrl != only) {
			continue
		}
		if !r.checking.begin(c.ID) {
			continue
		}
		wg.Add(1)
		r.bg.Go(func() {
			defer wg.Done()
			defer r.checking.end(c.ID)
			release, err := r.checking.slot(ctx)
			if err != nil {
				return // shutting down
			}
			defer release()
			r.checkExit(ctx, ctrl, c, recovering)
		})
	}
	if recovering {
		wg.Wait()
	}
}

func (r *Runtime) checkExit(ctx context.Context, ctrl controller.Controller, c sandbox.Container, recovering bool) {
	callCtx, cancel := bounded(ctx, statusTimeout)
	st, err := ctrl.ContainerStatus(callCtx, c.ID)
	cancel()
	if c.Status.State == runtimeapi.ContainerState_CONTAINER_CREATED {
		r.recoverStart(c, st, err)
		return
	}
	switch {
	case errdefs.IsNotFound(err):
		r.recordExit(c.ID, c.SandboxID, nil)
	case err != nil && recovering:
		r.log.Warn("recover: container status unknown", "pod", c.SandboxID, "container", c.ID, "error", err)
		r.setUnknown(c.ID, true)
	case err != nil:
		r.log.Debug("container status", "container", c.ID, "error", err)
	case st.State == controller.StateExited:
		r.recordExit(c.ID, c.SandboxID, &st)
		r.log.Info("container exited", "pod", c.SandboxID, "container", c.ID, "exit_code", st.ExitCode, "reason", st.Reason)
	case st.State == controller.StateRunning && c.Status.State == runtimeapi.ContainerState_CONTAINER_UNKNOWN:
		r.setUnknown(c.ID, false)
	}
}

// recoverStart gives a container recorded CREATED the state its
// controller reports, when a StartContainer cut short by a crash started
// it (running) or tried to (exited): a start retried on it would
// otherwise fail (the controller has it started already) and record a
// StartError over a running container. Not started, or not known, it
// stays created.
func (r *Runtime) recoverStart(c sandbox.Container, st controller.ContainerState, err error) {
	if err != nil {
		r.log.Debug("recover: status of a created container", "pod", c.SandboxID, "container", c.ID, "error", err)
		return
	}
	r.adoptStart(c, st, "recover: a start cut short")
}

// adoptStart records the start of a container recorded CREATED that its
// controller has started (st running, or exited since): a start cut short
// by a crash that the controller finished. It reports whether st was a
// started state.
func (r *Runtime) adoptStart(c sandbox.Container, st controller.ContainerState, why string) bool {
	switch st.State {
	case controller.StateRunning:
		if _, err := r.store.UpdateContainer(c.ID, func(cur sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
			if cur.State == runtimeapi.ContainerState_CONTAINER_CREATED {
				cur.State, cur.Pid, cur.StartedAt = runtimeapi.ContainerState_CONTAINER_RUNNING, st.Pid, st.StartedAt
				if cur.StartedAt.IsZero() {
					cur.StartedAt = time.Now()
				}
			}
			return cur, nil
		}); err != nil {
			r.log.Error("record container start", "container", c.ID, "error", err)
			return true
		}
		r.log.Info(why+" had started the container", "pod", c.SandboxID, "container", c.ID, "pid", st.Pid)
		r.publish(c.ID, c.SandboxID, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
		return true
	case controller.StateExited:
		r.log.Info(why+" ended", "pod", c.SandboxID, "container", c.ID, "exit_code", st.ExitCode, "reason", st.Reason)
		r.recordExit(c.ID, c.SandboxID, &st)
		return true
	}
	return false
}

// setUnknown marks a running container UNKNOWN, or an unknown one
// RUNNING again.
func (r *Runtime) setUnknown(id string, unknown bool) {
	from, to := runtimeapi.ContainerState_CONTAINER_RUNNING, runtimeapi.ContainerState_CONTAINER_UNKNOWN
	if !unknown {
		from, to = to, from
	}
	changed := false
	_, err := r.store.UpdateContainer(id, func(st sandbox.ContainerStatus) (sandbox.ContainerStatus, error) {
		if st.State == from {
			st.State, changed = to, true
		}
		return st, nil
	})
	if err == nil && changed && unknown {
		r.cfg.Metrics.MarkedUnknown()
	}
	if err != nil && !errdefs.IsNotFound(err) {
		r.log.Error("record container state", "container", id, "state", to, "error", err)
	}
}

// inflight is a set of ids with a call in flight, and the slots that
// bound how many calls are in flight at once.
type inflight struct {
	mu    sync.Mutex
	ids   map[string]bool
	slots chan struct{}
}

// begin adds id, or answers false when it is there already.
func (f *inflight) begin(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ids[id] {
		return false
	}
	if f.ids == nil {
		f.ids = map[string]bool{}
	}
	f.ids[id] = true
	return true
}

func (f *inflight) end(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ids, id)
}

// slot waits for one of fanoutLimit slots, or for ctx to end; release
// gives it back.
func (f *inflight) slot(ctx context.Context) (release func(), err error) {
	f.mu.Lock()
	if f.slots == nil {
		f.slots = make(chan struct{}, fanoutLimit)
	}
	slots := f.slots
	f.mu.Unlock()
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
