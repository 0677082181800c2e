package observe

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

// service is the gRPC ObserveService over a Hub and a LogBroadcaster. Its
// three streams live in observe_*.go, one file per RPC.
type service struct {
	observev0.UnimplementedObserveServiceServer
	hub  *Hub
	logs *LogBroadcaster
}

// NewService returns the gRPC ObserveService. logs may be nil, in which case
// GetAuraeDaemonLogStream answers Unavailable.
func NewService(h *Hub, logs *LogBroadcaster) observev0.ObserveServiceServer {
	return &service{hub: h, logs: logs}
}

// streamEnded is what a stream returns when its client's context ended.
func streamEnded(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Canceled, err.Error())
}

func toWorkloadRef(w Workload) *observev0.WorkloadReference {
	return &observev0.WorkloadReference{WorkloadType: w.Type, Id: w.ID}
}
