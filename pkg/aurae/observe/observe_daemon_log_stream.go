package observe

import (
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

// daemonLogChannel is LogItem.channel of auraed's own records.
const daemonLogChannel = "auraed"

// GetAuraeDaemonLogStream streams auraed's log records, from the call on,
// each as one JSON line, until the client goes away.
func (s *service) GetAuraeDaemonLogStream(_ *observev0.GetAuraeDaemonLogStreamRequest, stream grpc.ServerStreamingServer[observev0.LogItem]) error {
	if s.logs == nil {
		return status.Error(codes.Unavailable, "this server does not broadcast its log")
	}
	ctx := stream.Context()
	sub, unsubscribe := s.logs.subscribe()
	defer func() {
		if lost := unsubscribe(); lost > 0 {
			slog.Warn("daemon log subscriber was too slow and lost records", "lost", lost)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return streamEnded(ctx)
		case l := <-sub.ch:
			if err := stream.Send(&observev0.LogItem{Channel: daemonLogChannel, Line: l.line, Timestamp: l.at}); err != nil {
				return err
			}
		}
	}
}
