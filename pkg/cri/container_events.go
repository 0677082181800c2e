package cri

import (
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// publish sends a container event with the pod's and its containers'
// current statuses, as the kubelet's evented PLEG wants them.
func (r *Runtime) publish(containerID, podID string, typ runtimeapi.ContainerEventType) {
	ev := &runtimeapi.ContainerEventResponse{ContainerId: containerID, ContainerEventType: typ, CreatedAt: time.Now().UnixNano()}
	if sb, err := r.store.Sandbox(podID); err == nil {
		ev.PodSandboxStatus = sandboxStatus(sb)
		for _, c := range r.store.ContainersOf(podID) {
			ev.ContainersStatuses = append(ev.ContainersStatuses, containerStatus(c))
		}
	}
	r.events.Publish(ev)
}

// publishGone is publish for a container already removed from the store.
func (r *Runtime) publishGone(c sandbox.Container, typ runtimeapi.ContainerEventType) {
	r.publish(c.ID, c.SandboxID, typ)
}

// GetContainerEvents implements RuntimeService.GetContainerEvents: every
// container event from the call on, until the client goes away.
func (r *Runtime) GetContainerEvents(_ *runtimeapi.GetEventsRequest, stream runtimeapi.RuntimeService_GetContainerEventsServer) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	ch, cancel := r.events.Subscribe()
	defer cancel()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case ev := <-ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
