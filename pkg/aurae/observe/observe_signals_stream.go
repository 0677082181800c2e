package observe

import (
	"log/slog"

	"google.golang.org/grpc"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

// GetPosixSignalsStream streams the signal events published from the call
// on: all of them when no workload (or one of type UNSPECIFIED) is named,
// otherwise those of the workload's type and, when its id is not empty, id.
func (s *service) GetPosixSignalsStream(req *observev0.GetPosixSignalsStreamRequest, stream grpc.ServerStreamingServer[observev0.GetPosixSignalsStreamResponse]) error {
	ctx := stream.Context()
	ref := req.GetWorkload()
	all := ref.GetWorkloadType() == observev0.WorkloadType_WORKLOAD_TYPE_UNSPECIFIED
	sub, unsubscribe := s.hub.subscribeSignals(all, Workload{Type: ref.GetWorkloadType(), ID: ref.GetId()})
	slog.Debug("posix signal stream subscribed", "workload_type", ref.GetWorkloadType().String(), "workload_id", ref.GetId())
	defer func() {
		if lost := unsubscribe(); lost > 0 {
			slog.Warn("signal subscriber was too slow and lost events", "lost", lost)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return streamEnded(ctx)
		case ev := <-sub.ch:
			err := stream.Send(&observev0.GetPosixSignalsStreamResponse{Signal: &observev0.Signal{
				Signal:         int32(ev.Signal),
				ProcessId:      int64(ev.Pid),
				Workload:       toWorkloadRef(ev.Workload),
				ExecutableName: ev.Executable,
				Stopped:        ev.Stopped,
				Timestamp:      ev.Time.UnixNano(),
			}})
			if err != nil {
				return err
			}
		}
	}
}
