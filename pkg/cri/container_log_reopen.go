package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ReopenContainerLog implements RuntimeService.ReopenContainerLog: after the
// kubelet rotated the log file, the container's monitor writes to a new one.
func (r *Runtime) ReopenContainerLog(ctx context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	ctrl, c, err := r.runningContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	if err := ctrl.ReopenContainerLog(callCtx, c.ID); err != nil {
		return nil, fmt.Errorf("reopen log of %s: %w", c.ID, err)
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}
