package cri

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PortForward implements RuntimeService.PortForward: it checks that the pod
// is ready and answers the stream server's URL; the pod's controller
// forwards the connections (auraed connects from inside the pod's network).
func (r *Runtime) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if req.GetPodSandboxId() == "" {
		return nil, fmt.Errorf("pod sandbox id is empty: %w", errInvalid)
	}
	for _, p := range req.GetPort() {
		if p <= 0 || p > 65535 {
			return nil, fmt.Errorf("port %d is out of range: %w", p, errInvalid)
		}
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("pod sandbox %s is not ready: %w", sb.ID, errPrecondition)
	}
	srv, err := r.streamServer()
	if err != nil {
		return nil, err
	}
	full := proto.Clone(req).(*runtimeapi.PortForwardRequest)
	full.PodSandboxId = sb.ID
	resp, err := srv.GetPortForward(full)
	if err != nil {
		return nil, fmt.Errorf("port forward to pod %s: %w", sb.ID, err)
	}
	return resp, nil
}

// portForward forwards stream to 127.0.0.1:port in the pod's network,
// through the pod's controller, until the pod's side closes or the client
// goes.
func (r *Runtime) portForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	sb, err := r.store.Sandbox(podID)
	if err != nil {
		_ = stream.Close()
		return err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		_ = stream.Close()
		return fmt.Errorf("pod sandbox %s is not ready: %w", sb.ID, errPrecondition)
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		_ = stream.Close()
		return err
	}
	r.log.Info("port forward", "pod", sb.ID, "port", port)
	if err := ctrl.PortForward(ctx, sb.ID, port, stream); err != nil {
		return fmt.Errorf("port forward to pod %s port %d: %w", sb.ID, port, err)
	}
	return nil
}
