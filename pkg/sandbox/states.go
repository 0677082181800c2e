package sandbox

import (
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The life cycles, enforced here, in the one place every status change
// goes through (Store.UpdateContainer, Store.UpdateSandbox):
//
//	container: CREATED → RUNNING → EXITED, CREATED → EXITED (a start that
//	           failed), RUNNING ⇄ UNKNOWN (its runtime cannot say),
//	           UNKNOWN → EXITED; EXITED is final: a container never runs
//	           again. Once Removing, it stays so and never starts.
//	pod:       READY → NOTREADY, final; once Removing, it stays so.
var containerNext = map[runtimeapi.ContainerState][]runtimeapi.ContainerState{
	runtimeapi.ContainerState_CONTAINER_CREATED: {runtimeapi.ContainerState_CONTAINER_CREATED, runtimeapi.ContainerState_CONTAINER_RUNNING, runtimeapi.ContainerState_CONTAINER_EXITED},
	runtimeapi.ContainerState_CONTAINER_RUNNING: {runtimeapi.ContainerState_CONTAINER_RUNNING, runtimeapi.ContainerState_CONTAINER_EXITED, runtimeapi.ContainerState_CONTAINER_UNKNOWN},
	runtimeapi.ContainerState_CONTAINER_UNKNOWN: {runtimeapi.ContainerState_CONTAINER_UNKNOWN, runtimeapi.ContainerState_CONTAINER_RUNNING, runtimeapi.ContainerState_CONTAINER_EXITED},
	runtimeapi.ContainerState_CONTAINER_EXITED:  {runtimeapi.ContainerState_CONTAINER_EXITED},
}

// checkContainerTransition refuses (FailedPrecondition) a container status
// change its life cycle does not allow.
func checkContainerTransition(id string, from, to ContainerStatus) error {
	ok := false
	for _, s := range containerNext[from.State] {
		if s == to.State {
			ok = true
		}
	}
	switch {
	case !ok:
		return fmt.Errorf("container %s: %s → %s is not a transition of its life cycle: %w", id, from.State, to.State, errdefs.ErrFailedPrecondition)
	case from.Removing && !to.Removing:
		return fmt.Errorf("container %s: it is being removed: %w", id, errdefs.ErrFailedPrecondition)
	case to.Removing && from.State == runtimeapi.ContainerState_CONTAINER_CREATED && to.State == runtimeapi.ContainerState_CONTAINER_RUNNING:
		return fmt.Errorf("container %s: it is being removed, it cannot start: %w", id, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// checkSandboxTransition refuses (FailedPrecondition) a pod status change
// its life cycle does not allow.
func checkSandboxTransition(id string, from, to SandboxStatus) error {
	switch {
	case from.State == runtimeapi.PodSandboxState_SANDBOX_NOTREADY && to.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY:
		return fmt.Errorf("pod %s: %s → %s is not a transition of its life cycle: %w", id, from.State, to.State, errdefs.ErrFailedPrecondition)
	case from.Removing && !to.Removing:
		return fmt.Errorf("pod %s: it is being removed: %w", id, errdefs.ErrFailedPrecondition)
	}
	return nil
}
